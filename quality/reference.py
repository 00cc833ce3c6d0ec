"""Reference data the rules check against: official administrative codes."""
from __future__ import annotations

from functools import cache

# Province codes that open a personal ID (CCCD): the birth-registration
# province, as the 63 pre-2025 province codes (the 34 post-merger codes are a
# subset: a citizen born before the merger keeps the old code for life).
CCCD_PROVINCE_CODES: frozenset[str] = frozenset(
    f"{c:03d}" for c in (
        1, 2, 4, 6, 8, 10, 11, 12, 14, 15, 17, 19, 20, 22, 24, 25, 26, 27, 30, 31, 33, 34, 35, 36,
        37, 38, 40, 42, 44, 45, 46, 48, 49, 51, 52, 54, 56, 58, 60, 62, 64, 66, 67, 68, 70, 72, 74,
        75, 77, 79, 80, 82, 83, 84, 86, 87, 89, 91, 92, 93, 94, 95, 96,
    )
)


@cache
def commune_codes() -> frozenset[str]:
    """All 3,321 commune-level codes in force since 2025-07-01 (5 digits, zero-padded)."""
    from vietnam_provinces import Ward

    return frozenset(f"{int(w.code):05d}" for w in Ward.iter_all())


@cache
def province_communes(province_code: int) -> dict[str, str]:
    """Commune code -> name for one province (e.g. 37, Ninh Binh: 129 communes)."""
    from vietnam_provinces import Ward

    return {f"{int(w.code):05d}": w.name for w in Ward.iter_all() if int(w.province_code) == province_code}
