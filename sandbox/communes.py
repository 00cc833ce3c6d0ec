"""The 129 communes (xã/phường) of Ninh Bình province (code 37).

Source: the ``vietnam_provinces`` package (post-2025 two-level administrative
units). Codes are the 5-digit, zero-padded ward codes used by the GSO.

Example:
    >>> ninh_binh_communes()[0]
    ('14464', 'Xã Gia Viễn')
"""

from __future__ import annotations

import unicodedata
from functools import cache

from vietnam_provinces import ProvinceCode, Ward

PROVINCE_CODE = 37
"""Ninh Bình's province code (also the CCCD prefix ``'037'``)."""

UNKNOWN_COMMUNE = "99999"
"""Commune code used by injected ``commune_unknown`` defects (never a real code)."""


@cache
def _communes() -> tuple[tuple[str, str], ...]:
    wards = Ward.iter_by_province(ProvinceCode(PROVINCE_CODE))
    return tuple(
        (f"{int(w.code):05d}", unicodedata.normalize("NFC", w.name)) for w in wards
    )


def ninh_binh_communes() -> list[tuple[str, str]]:
    """Return ``(code, name)`` for every commune of Ninh Bình, in package order.

    The lookup is cached; each call returns a fresh list copy so callers may
    mutate it freely.

    Returns:
        129 pairs such as ``('14464', 'Xã Gia Viễn')``; codes are 5-digit
        zero-padded strings, names are NFC-normalised.
    """
    return list(_communes())


@cache
def commune_codes() -> frozenset[str]:
    """Return the set of the 129 valid commune codes, e.g. ``{'14464', ...}``."""
    return frozenset(code for code, _ in _communes())


def commune_names() -> dict[str, str]:
    """Return ``{code: name}``, e.g. ``{'14464': 'Xã Gia Viễn', ...}``."""
    return dict(_communes())
