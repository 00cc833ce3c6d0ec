"""Synthetic official documents (văn bản) held by the provincial document management system.

Example row (``received_at`` and ``updated_at`` are UTC-aware; ``received_at`` is
``None`` for outgoing documents)::

    {'document_id': 'VB37-2025-004512', 'direction': 'incoming',
     'number_symbol': '123/BNV-CCVC', 'document_type': 'cong_van',
     'summary': 'V/v triển khai Đề án 06 trên địa bàn tỉnh',
     'issuing_agency': 'Bộ Nội vụ', 'agency_code': '000.00.39.H42',
     'issued_on': date(2025, 8, 14),
     'received_at': datetime(2025, 8, 15, 2, 30, tzinfo=UTC),
     'digitally_signed': True, 'signer': 'Nguyễn Văn Hùng',
     'updated_at': datetime(2025, 8, 15, 3, 10, tzinfo=UTC)}

Defects (one per defective row): ``direction_unknown`` (``direction='den'``),
``summary_missing`` (``summary=None``), ``received_before_issued`` (an incoming
document received before midnight +07:00 of its ``issued_on``) and
``summary_not_nfc`` (the summary in Unicode NFD, which differs from its NFC form).
"""

from __future__ import annotations

import random
import unicodedata
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from faker import Faker

from sandbox.citizens import vietnamese_name
from sandbox.common import (VN_TZ, WINDOW_END_UTC, WINDOW_START_UTC, GeneratedRows, in_service_order, pick_defects,
                            random_date, random_instant, seeded_sources)

DOCUMENT_FIELDS = (
    "document_id", "direction", "number_symbol", "document_type", "summary", "issuing_agency",
    "agency_code", "issued_on", "received_at", "digitally_signed", "signer", "updated_at",
)
"""The fields of a document, in JSON order."""

DOCUMENT_DEFECT_KINDS = ("direction_unknown", "summary_missing", "received_before_issued", "summary_not_nfc")
DIRECTIONS = ("incoming", "outgoing")
DOCUMENT_TYPES = ("cong_van", "quyet_dinh", "to_trinh", "bao_cao", "ke_hoach", "thong_bao", "giay_moi")
TYPE_WEIGHTS = (40, 15, 8, 12, 8, 9, 8)
TYPE_SYMBOLS = {"quyet_dinh": "QĐ", "to_trinh": "TTr", "bao_cao": "BC", "ke_hoach": "KH",
                "thong_bao": "TB", "giay_moi": "GM"}
"""Abbreviation in the number symbol (``'45/QĐ-UBND'``); a công văn has none (``'123/UBND-VP'``)."""

SIGNED_SHARE = {"incoming": 0.95, "outgoing": 0.8126}
"""Outgoing: Ninh Bình, 31,078 of 38,243 sent documents digitally signed (81.26%)."""
INCOMING_SHARE = 0.55
TIE_RATE = 0.10
"""Share of rows reusing an earlier row's ``updated_at`` (exercises inclusive cursors)."""
UNKNOWN_DIRECTION = "den"
ISSUED_FIRST = date(2025, 6, 16)
ISSUED_LAST = date(2025, 10, 24)

AGENCIES: tuple[tuple[str, str, str], ...] = (
    ("000.00.00.H42", "UBND tỉnh Ninh Bình", "UBND"),
    ("000.00.01.H42", "Văn phòng UBND tỉnh Ninh Bình", "VP"),
    ("000.00.31.H42", "Sở Tư pháp", "STP"),
    ("000.00.32.H42", "Sở Xây dựng", "SXD"),
    ("000.00.33.H42", "Sở Tài chính", "STC"),
    ("000.00.34.H42", "Sở Công Thương", "SCT"),
    ("000.00.35.H42", "Sở Y tế", "SYT"),
    ("000.00.36.H42", "Sở Nông nghiệp và Môi trường", "SNNMT"),
    ("000.00.37.H42", "Sở Giáo dục và Đào tạo", "SGDĐT"),
    ("000.00.38.H42", "Sở Văn hóa, Thể thao và Du lịch", "SVHTTDL"),
    ("000.00.39.H42", "Sở Nội vụ", "SNV"),
)
"""Owning provincial agencies: ``(agency_code, name, symbol)``."""

SENDERS: tuple[tuple[str, str], ...] = (
    ("Văn phòng Chính phủ", "VPCP"), ("Bộ Nội vụ", "BNV"), ("Bộ Tài chính", "BTC"),
    ("Bộ Tư pháp", "BTP"), ("Bộ Công an", "BCA"), ("Bộ Y tế", "BYT"),
    ("Bảo hiểm xã hội tỉnh Ninh Bình", "BHXH"), ("Công an tỉnh Ninh Bình", "CAT"),
    ("UBND tỉnh Ninh Bình", "UBND"), ("Sở Tài chính", "STC"), ("Sở Nội vụ", "SNV"),
)
"""Issuers of incoming documents: ``(name, symbol)``."""

UNITS = ("VP", "KT", "TH", "NC", "KGVX", "TCCB", "HCQT", "CCVC")
TOPICS = (
    "triển khai Đề án 06 trên địa bàn tỉnh",
    "chuyển đổi số năm 2025",
    "cải cách hành chính quý III năm 2025",
    "giải ngân vốn đầu tư công năm 2025",
    "phòng, chống thiên tai mùa mưa bão",
    "sắp xếp đơn vị hành chính cấp xã",
    "cấp giấy chứng nhận quyền sử dụng đất lần đầu",
    "thu ngân sách nhà nước 9 tháng đầu năm",
    "tiêm chủng mở rộng cho trẻ em",
    "tuyển sinh lớp 10 năm học 2025-2026",
    "phát triển du lịch Quần thể danh thắng Tràng An",
    "bảo đảm trật tự an toàn giao thông dịp lễ Quốc khánh",
    "số hóa hồ sơ, kết quả giải quyết thủ tục hành chính",
    "xây dựng nông thôn mới nâng cao",
    "quản lý chất thải rắn sinh hoạt",
    "kiểm tra công tác văn thư, lưu trữ",
    "thực hiện chính sách bảo hiểm y tế học sinh",
    "kết nối, chia sẻ dữ liệu dân cư",
)
SUMMARY_TEMPLATES = {
    "cong_van": "V/v {topic}",
    "quyet_dinh": "Về việc phê duyệt kế hoạch {topic}",
    "to_trinh": "Về việc đề nghị phê duyệt kinh phí {topic}",
    "bao_cao": "Báo cáo kết quả {topic}",
    "ke_hoach": "Kế hoạch triển khai {topic}",
    "thong_bao": "Thông báo kết luận của Chủ tịch UBND tỉnh về {topic}",
    "giay_moi": "Mời dự họp về {topic}",
}


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _number_symbol(rng: random.Random, doc_type: str, issuer_symbol: str) -> str:
    """``'123/UBND-VP'`` for a công văn, ``'45/QĐ-UBND'`` for the other types."""
    number = rng.randint(1, 2400)
    if doc_type == "cong_van":
        return _nfc(f"{number}/{issuer_symbol}-{rng.choice(UNITS)}")
    return _nfc(f"{number}/{TYPE_SYMBOLS[doc_type]}-{issuer_symbol}")


def _received_at(rng: random.Random, issued: date, before_issue: bool) -> datetime:
    """Reception instant (UTC): office hours 0-4 days after issue, or hours before issue (defect)."""
    midnight = datetime.combine(issued, time(0), VN_TZ)
    if before_issue:
        return (midnight - timedelta(minutes=rng.randint(60, 72 * 60))).astimezone(UTC)
    day = issued + timedelta(days=rng.randint(0, 4))
    at = datetime.combine(day, time(rng.randint(7, 16), rng.randint(0, 59), rng.randint(0, 59)), VN_TZ)
    return at.astimezone(UTC)


def _updated_at(rng: random.Random, base: datetime, earlier: list[datetime]) -> datetime:
    """An instant after ``base`` within the window; sometimes an earlier row's (a tie)."""
    if earlier and rng.random() < TIE_RATE:
        candidate = rng.choice(earlier)
        if candidate >= base:
            return candidate
    low = max(base, WINDOW_START_UTC)
    return random_instant(rng, low, min(low + timedelta(days=5), WINDOW_END_UTC))


def _document(rng: random.Random, fake: Faker, kind: str | None) -> dict[str, Any]:
    """One document without ``document_id`` and ``updated_at``; ``kind`` is its defect, if any."""
    direction = "incoming" if kind == "received_before_issued" or rng.random() < INCOMING_SHARE else "outgoing"
    doc_type = rng.choices(DOCUMENT_TYPES, TYPE_WEIGHTS)[0]
    agency_code, agency_name, agency_symbol = rng.choice(AGENCIES)
    if direction == "incoming":
        issuer, issuer_symbol = rng.choice([s for s in SENDERS if s[0] != agency_name])
    else:
        issuer, issuer_symbol = agency_name, agency_symbol
    issued = random_date(rng, ISSUED_FIRST, ISSUED_LAST)
    signed = rng.random() < SIGNED_SHARE[direction]
    return {
        "direction": direction,
        "number_symbol": _number_symbol(rng, doc_type, issuer_symbol),
        "document_type": doc_type,
        "summary": _nfc(SUMMARY_TEMPLATES[doc_type].format(topic=rng.choice(TOPICS))),
        "issuing_agency": issuer,
        "agency_code": agency_code,
        "issued_on": issued,
        "received_at": (_received_at(rng, issued, kind == "received_before_issued")
                        if direction == "incoming" else None),
        "digitally_signed": signed,
        "signer": vietnamese_name(fake, rng.choice(("male", "female"))) if signed else None,
    }


def _apply_defect(row: dict[str, Any], kind: str) -> None:
    if kind == "direction_unknown":
        row["direction"] = UNKNOWN_DIRECTION
    elif kind == "summary_missing":
        row["summary"] = None
    elif kind == "summary_not_nfc":
        row["summary"] = unicodedata.normalize("NFD", row["summary"])
        assert row["summary"] != _nfc(row["summary"]), "every summary template has diacritics"
    # received_before_issued is built into the row by _document


def make_documents(seed: int, count: int, defect_rate: float = 0.01) -> list[dict[str, Any]]:
    """Generate ``count`` documents deterministically (see :func:`make_documents_with_defects`)."""
    return make_documents_with_defects(seed, count, defect_rate)[0]


def make_documents_with_defects(seed: int, count: int, defect_rate: float = 0.01) -> GeneratedRows:
    """Generate ``count`` documents and the injected defects, deterministically.

    Arguments as for :func:`sandbox.common.generate_with_defects`; unlike there,
    ``document_id`` is given once all rows exist, in issue-date order.

    Returns:
        Rows sorted by ``(updated_at, document_id)`` (see the module docstring)
        and ``{document_id: defect_kind}``, e.g. ``{'VB37-2025-004517': 'summary_missing'}``.
    """
    rng, fake = seeded_sources(seed)
    defects = pick_defects(rng, count, defect_rate, DOCUMENT_DEFECT_KINDS)
    rows: list[dict[str, Any]] = []
    for index in range(count):
        kind = defects.get(index)
        row = _document(rng, fake, kind)
        issued_midnight = datetime.combine(row["issued_on"], time(0), VN_TZ).astimezone(UTC)
        base = max(row["received_at"] or issued_midnight + timedelta(hours=8), issued_midnight)
        row["updated_at"] = _updated_at(rng, base, [r["updated_at"] for r in rows[-50:]])
        if kind:
            _apply_defect(row, kind)
        rows.append(row)

    # Register numbers follow the issue date, like a real document register.
    first_number = rng.randint(1000, 5000)
    order = sorted(range(count), key=lambda i: (rows[i]["issued_on"], i))
    defect_by_id: dict[str, str] = {}
    for position, i in enumerate(order):
        doc_id = f"VB37-{rows[i]['issued_on'].year}-{first_number + position:06d}"
        rows[i] = {"document_id": doc_id, **rows[i]}
        if i in defects:
            defect_by_id[doc_id] = defects[i]
    return in_service_order([{k: r[k] for k in DOCUMENT_FIELDS} for r in rows], "document_id"), defect_by_id
