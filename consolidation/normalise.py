"""Normal forms the consolidation compares by: names, tax codes, personal IDs.

Example:
    >>> fold_name("  Nguyễn  Thị   LAN ")
    'nguyen thi lan'
    >>> fold_name("Nguyen Thi Lan") == fold_name("Nguyễn Thị Lan")
    True
    >>> tax_code_key("0101 234 567"), tax_code_key("0101234567-001"), tax_code_key("12345")
    ('0101234567', '0101234567-001', None)
    >>> personal_id_key("037190012345"), personal_id_key("123456789")
    ('037190012345', None)
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date

_SPACES = re.compile(r"\s+")
_TAX_CODE = re.compile(r"^\d{10}(-\d{3})?$")
_PERSONAL_ID = re.compile(r"^\d{12}$")

__all__ = ["accent_count", "cccd_agrees", "fold_name", "nfc", "personal_id_key", "tax_code_key"]


def nfc(text: str) -> str:
    """``text`` in Unicode NFC with runs of whitespace collapsed and the ends trimmed."""
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()


def fold_name(text: str | None) -> str:
    """The matching form of a name: NFC, lowercase, accents stripped (``đ`` -> ``d``), whitespace collapsed.

    ``'Nguyễn Thị Lan'``, ``'NGUYEN THI  LAN'`` and ``'Nguyen Thi Lan'`` all give ``'nguyen thi lan'``.
    """
    if not text:
        return ""
    decomposed = unicodedata.normalize("NFD", nfc(text).lower())
    stripped = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    return _SPACES.sub(" ", stripped.replace("đ", "d")).strip()


def accent_count(text: str | None) -> int:
    """How many letters of ``text`` carry Vietnamese diacritics (``'Nguyễn Văn'`` -> 2); 0 for None."""
    if not text:
        return 0
    return sum(1 for ch in unicodedata.normalize("NFC", text) if ch.isalpha() and not ch.isascii())


def tax_code_key(value: str | None) -> str | None:
    """A tax code (MST) in its canonical form, or ``None`` if it is not 10 digits (or 10 + ``-NNN``).

    Spaces and dots are dropped: ``'0101.234.567'`` -> ``'0101234567'``.
    """
    if value is None:
        return None
    text = re.sub(r"[\s.]", "", str(value))
    return text if _TAX_CODE.match(text) else None


def personal_id_key(value: str | None) -> str | None:
    """A 12-digit CCCD, or ``None`` (missing, an old 9-digit CMND, or malformed)."""
    if value is None:
        return None
    text = re.sub(r"\s", "", str(value))
    return text if _PERSONAL_ID.match(text) else None


def cccd_agrees(personal_id: str, birth_date: date, sex: str | None = None) -> bool:
    """Whether a CCCD's 4th digit (century and sex) and 5th-6th digits (birth year) fit ``birth_date``/``sex``.

    Example: ``cccd_agrees('037190012345', date(1990, 4, 2), 'female')`` is True (1 = female, 1900s; 90).
    """
    digit, year = int(personal_id[3]), personal_id[4:6]
    century_ok = (digit in (0, 1)) == (birth_date.year < 2000) and digit <= 3
    sex_ok = sex is None or (digit % 2 == 1) == (sex == "female")
    return century_ok and sex_ok and year == f"{birth_date.year % 100:02d}"
