"""The procedure catalogue (danh mục TTHC) the National Public Service Portal publishes.

It starts with every procedure of :mod:`sandbox.procedures` (so each TTHC
dossier's ``procedure_code`` is in it), then adds seeded extra procedures.

Example row (the portal's own keys and string formats)::

    {'MaTTHC': '1.004227', 'TenTTHC': 'Cấp phiếu lý lịch tư pháp', 'LinhVuc': 'Lý lịch tư pháp',
     'CapThucHien': 'Tỉnh', 'MucDo': 'toan_trinh', 'ThoiHanGiaiQuyet': 10,
     'CoQuanThucHien': 'Sở Tư pháp', 'KhongPhuThuocDiaGioi': True, 'NgayCapNhat': '20250815093000'}

``KhongPhuThuocDiaGioi`` (a JSON boolean): the province accepts the procedure at any one-stop desk,
whatever the applicant's residence ("thủ tục không phụ thuộc địa giới hành chính"); about
:data:`BOUNDARY_FREE_SHARE` of the procedures, fixed by the code (so the same in every catalogue).
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from datetime import datetime
from typing import Any

from sandbox.common import VN_TZ, WINDOW_END_UTC, WINDOW_START_UTC, random_instant
from sandbox.procedures import DEPARTMENTS, PROCEDURES

PROCEDURE_FIELDS = ("MaTTHC", "TenTTHC", "LinhVuc", "CapThucHien", "MucDo", "ThoiHanGiaiQuyet",
                    "CoQuanThucHien", "KhongPhuThuocDiaGioi", "NgayCapNhat")
"""The keys of a ``LayThuTuc`` row, in JSON order."""

ONLINE_LEVELS = ("toan_trinh", "mot_phan")
COMMUNE_AGENCY = "UBND cấp xã"
DEADLINE_DAYS = (1, 3, 5, 7, 10, 15, 20, 30)
BOUNDARY_FREE_SHARE = 0.35
"""About this share of procedures has no administrative boundary (Binh Duong: 570 of its procedures, 2025)."""

_FIELD_KEYWORDS = (
    ("Chứng thực", "Chứng thực"), ("xây dựng", "Xây dựng"), ("đất", "Đất đai"),
    ("hộ kinh doanh", "Thành lập và hoạt động của hộ kinh doanh"), ("xã hội", "Bảo trợ xã hội"),
    ("khiếu nại", "Giải quyết khiếu nại"), ("lý lịch tư pháp", "Lý lịch tư pháp"), ("lái xe", "Đường bộ"),
    ("doanh nghiệp", "Thành lập và hoạt động doanh nghiệp"), ("rượu", "Lưu thông hàng hóa trong nước"),
    ("khám bệnh", "Khám bệnh, chữa bệnh"), ("môi trường", "Môi trường"),
    ("văn bằng", "Văn bằng, chứng chỉ"), ("lễ hội", "Văn hóa cơ sở"), ("tín ngưỡng", "Tín ngưỡng, tôn giáo"),
)
"""First keyword found in a procedure name -> its field; otherwise ``'Hộ tịch'``."""

EXTRA_SUBJECTS: tuple[tuple[str, str, str | None], ...] = (
    ("chứng chỉ hành nghề hoạt động xây dựng", "Xây dựng", "02"),
    ("giấy phép di dời công trình", "Xây dựng", "02"),
    ("giấy phép lưu hành xe quá tải trọng", "Đường bộ", "02"),
    ("chứng chỉ hành nghề dược", "Dược phẩm", "05"),
    ("giấy chứng nhận đủ điều kiện kinh doanh dược", "Dược phẩm", "05"),
    ("giấy chứng nhận cơ sở đủ điều kiện an toàn thực phẩm", "An toàn thực phẩm", "05"),
    ("giấy phép kinh doanh sản phẩm thuốc lá", "Lưu thông hàng hóa trong nước", "04"),
    ("giấy chứng nhận cửa hàng đủ điều kiện bán lẻ xăng dầu", "Kinh doanh khí, xăng dầu", "04"),
    ("giấy chứng nhận đăng ký hoạt động chi nhánh", "Thành lập và hoạt động doanh nghiệp", "03"),
    ("giấy chứng nhận đăng ký đầu tư", "Đầu tư tại Việt Nam", "03"),
    ("giấy phép khai thác nước dưới đất", "Tài nguyên nước", "06"),
    ("chứng chỉ hành nghề thú y", "Thú y", "06"),
    ("giấy phép hoạt động giáo dục kỹ năng sống", "Giáo dục và Đào tạo", "07"),
    ("giấy phép kinh doanh dịch vụ lữ hành nội địa", "Lữ hành", "08"),
    ("thẻ hướng dẫn viên du lịch", "Lữ hành", "08"),
    ("giấy phép kinh doanh dịch vụ karaoke", "Văn hóa cơ sở", "08"),
    ("văn bản chấp thuận tổ chức hội nghị tôn giáo", "Tín ngưỡng, tôn giáo", "09"),
    ("giấy phép lao động cho người lao động nước ngoài", "Việc làm", "10"),
    ("giấy xác nhận kinh tế trang trại", "Kinh tế hợp tác và phát triển nông thôn", None),
    ("giấy phép tổ chức sự kiện văn hóa tại cơ sở", "Văn hóa cơ sở", None),
    ("giấy xác nhận nguồn gốc đất", "Đất đai", None),
    ("giấy xác nhận hộ nghèo, hộ cận nghèo", "Bảo trợ xã hội", None),
    ("giấy xác nhận thân nhân người có công", "Người có công", None),
    ("giấy phép sửa chữa, cải tạo nhà ở riêng lẻ", "Xây dựng", None),
    ("giấy chứng nhận đăng ký hợp tác xã", "Kinh tế hợp tác và phát triển nông thôn", None),
)
"""Subjects of the seeded extra procedures: ``(subject, field, department or None for communes)``."""
EXTRA_ACTIONS = ("Cấp", "Cấp lại", "Điều chỉnh", "Gia hạn", "Cấp đổi")
MAX_PROCEDURES = len(PROCEDURES) + len(EXTRA_SUBJECTS) * len(EXTRA_ACTIONS)


def portal_time(value: datetime) -> str:
    """Aware datetime -> the portal's ``yyyyMMddHHmmss`` in Asia/Ho_Chi_Minh (``'20250815093000'``)."""
    return value.astimezone(VN_TZ).strftime("%Y%m%d%H%M%S")


def _field_of(name: str) -> str:
    return next((field for keyword, field in _FIELD_KEYWORDS if keyword in name), "Hộ tịch")


def boundary_free(code: str) -> bool:
    """Whether procedure ``code`` has no administrative boundary: fixed by a digest of the code, consuming no
    randomness (the rest of the catalogue is what it was before the field)."""
    return int(hashlib.sha256(code.encode()).hexdigest()[:8], 16) / 16**8 < BOUNDARY_FREE_SHARE


def _row(rng: random.Random, code: str, name: str, field: str, department: str | None) -> dict[str, Any]:
    return {
        "MaTTHC": code,
        "TenTTHC": unicodedata.normalize("NFC", name),
        "LinhVuc": field,
        "CapThucHien": "Xã" if department is None else "Tỉnh",
        "MucDo": rng.choices(ONLINE_LEVELS, (60, 40))[0],
        "ThoiHanGiaiQuyet": rng.choice(DEADLINE_DAYS),
        "CoQuanThucHien": COMMUNE_AGENCY if department is None else DEPARTMENTS[department],
        "KhongPhuThuocDiaGioi": boundary_free(code),
        "NgayCapNhat": portal_time(random_instant(rng, WINDOW_START_UTC, WINDOW_END_UTC)),
    }


def make_procedures(seed: int, count: int = 120) -> list[dict[str, Any]]:
    """The portal's procedure catalogue, deterministic for a seed (no defects).

    Args:
        seed: Seed of the private ``random.Random`` (extra procedures, levels, dates).
        count: Number of procedures, ``len(PROCEDURES)`` (30) .. ``MAX_PROCEDURES`` (155).

    Returns:
        Rows (see the module docstring) sorted by ``(NgayCapNhat, MaTTHC)``; ``MaTTHC``
        is unique and every code of :data:`sandbox.procedures.PROCEDURES` is present.

    Raises:
        ValueError: ``count`` outside the range above.
    """
    if not len(PROCEDURES) <= count <= MAX_PROCEDURES:
        raise ValueError(f"count must be within [{len(PROCEDURES)}, {MAX_PROCEDURES}], got {count}")
    rng = random.Random(seed)
    rows = [_row(rng, p.code, p.name, _field_of(p.name), p.department) for p in PROCEDURES]
    codes = {p.code for p in PROCEDURES}
    combos = [(action, subject) for subject in EXTRA_SUBJECTS for action in EXTRA_ACTIONS]
    for action, (subject, field, department) in rng.sample(combos, count - len(PROCEDURES)):
        code = ""
        while not code or code in codes:
            code = f"{rng.choice((1, 1, 1, 2))}.{rng.randrange(100, 13_000):06d}"
        codes.add(code)
        rows.append(_row(rng, code, f"{action} {subject}", field, department))
    rows.sort(key=lambda r: (r["NgayCapNhat"], r["MaTTHC"]))
    return rows
