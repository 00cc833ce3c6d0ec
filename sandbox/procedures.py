"""Fixed catalogue of administrative procedures (thủ tục hành chính, TTHC).

Codes look like national DVC codes (``'1.004227'``) and are generated from a
fixed seed, so they are identical for every sandbox seed.

Example:
    >>> PROCEDURES[0]
    Procedure(code='1.000508', name='Đăng ký khai sinh', department=None)
"""

from __future__ import annotations

import random
from typing import NamedTuple

DEPARTMENTS: dict[str, str] = {
    "01": "Sở Tư pháp",
    "02": "Sở Xây dựng",
    "03": "Sở Tài chính",
    "04": "Sở Công Thương",
    "05": "Sở Y tế",
    "06": "Sở Nông nghiệp và Môi trường",
    "07": "Sở Giáo dục và Đào tạo",
    "08": "Sở Văn hóa, Thể thao và Du lịch",
    "09": "Sở Dân tộc và Tôn giáo",
    "10": "Sở Nội vụ",
}
"""Two-digit agency code -> provincial department name."""

COMMUNE_AGENCY_BASE = 20
"""Commune People's Committees use agency codes ``20 + (commune index % 80)``."""

_COMMUNE_LEVEL = (
    "Đăng ký khai sinh",
    "Đăng ký kết hôn",
    "Đăng ký khai tử",
    "Chứng thực bản sao từ bản chính",
    "Chứng thực chữ ký trong các giấy tờ, văn bản",
    "Chứng thực hợp đồng, giao dịch",
    "Cấp giấy phép xây dựng nhà ở riêng lẻ",
    "Đăng ký nhận cha, mẹ, con",
    "Đăng ký giám hộ",
    "Cấp bản sao trích lục hộ tịch",
    "Cấp giấy xác nhận tình trạng hôn nhân",
    "Đăng ký thay đổi, cải chính, bổ sung thông tin hộ tịch",
    "Đăng ký lại khai sinh",
    "Đăng ký hộ kinh doanh",
    "Đăng ký biến động quyền sử dụng đất",
    "Cấp giấy chứng nhận quyền sử dụng đất lần đầu",
    "Hỗ trợ chi phí mai táng cho đối tượng bảo trợ xã hội",
    "Trợ cấp xã hội hằng tháng",
    "Giải quyết khiếu nại lần đầu",
    "Đăng ký khai sinh, đăng ký thường trú, cấp thẻ bảo hiểm y tế cho trẻ dưới 6 tuổi",
)

_DEPARTMENT_LEVEL = (
    ("Cấp phiếu lý lịch tư pháp", "01"),
    ("Cấp giấy phép xây dựng công trình", "02"),
    ("Đổi giấy phép lái xe", "02"),
    ("Cấp giấy chứng nhận đăng ký doanh nghiệp", "03"),
    ("Cấp giấy phép bán lẻ sản phẩm rượu", "04"),
    ("Cấp giấy phép hành nghề khám bệnh, chữa bệnh", "05"),
    ("Cấp giấy phép môi trường", "06"),
    ("Cấp bản sao văn bằng, chứng chỉ từ sổ gốc", "07"),
    ("Cấp giấy phép tổ chức lễ hội", "08"),
    ("Đăng ký hoạt động tín ngưỡng", "09"),
)


class Procedure(NamedTuple):
    """One procedure, e.g. ``Procedure('1.004227', 'Đăng ký khai sinh', None)``.

    ``department`` is the two-digit code of the handling department, or
    ``None`` when the commune People's Committee (UBND xã) receives it.
    """

    code: str
    name: str
    department: str | None


def _build() -> tuple[Procedure, ...]:
    rng = random.Random(370_037)
    codes: list[str] = []
    while len(codes) < len(_COMMUNE_LEVEL) + len(_DEPARTMENT_LEVEL):
        code = f"{rng.choice((1, 1, 1, 2))}.{rng.randrange(100, 13_000):06d}"
        if code not in codes:
            codes.append(code)
    named = [(n, None) for n in _COMMUNE_LEVEL] + list(_DEPARTMENT_LEVEL)
    return tuple(Procedure(c, n, d) for c, (n, d) in zip(codes, named))


PROCEDURES: tuple[Procedure, ...] = _build()
"""All 30 procedures: 20 handled by communes, 10 by provincial departments."""
COMMUNE_PROCEDURES = tuple(p for p in PROCEDURES if p.department is None)
DEPARTMENT_PROCEDURES = tuple(p for p in PROCEDURES if p.department is not None)
