"""Reference data the rules check against: official administrative codes."""
from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from pathlib import Path

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
    """All 3,321 commune-level codes in force since 2025-07-01 (5 digits, zero-padded).

    From the `vietnam_provinces` package: read from the data file it ships
    (`data/flat-divisions.json`, ~7 ms) where it has one, else through its API, whose import
    takes ~0.3 s (it builds enums of every division). The codes are kept in
    `$LGSP_HOME/cache/`, keyed by the installed package's files, so a new process (an Airflow
    task, an incremental run) reads 3,321 codes instead.
    """
    cached = _cache_file()
    if cached is not None:
        try:
            return frozenset(json.loads(cached.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass
    codes = _codes_from_package_data()
    if codes is None:
        from vietnam_provinces import Ward

        codes = frozenset(f"{int(w.code):05d}" for w in Ward.iter_all())
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(sorted(codes)), encoding="utf-8")
            os.replace(tmp, cached)
        except OSError:  # a read-only home: the codes are still right, only not kept
            pass
    return codes


def _package_init() -> Path | None:
    """The installed `vietnam_provinces`' `__init__.py`, found without importing it (None if not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("vietnam_provinces")
    return Path(spec.origin) if spec is not None and spec.origin else None


def _codes_from_package_data() -> frozenset[str] | None:
    """The commune codes in the package's own data file, without importing it; None if it has no such file."""
    init = _package_init()
    try:
        wards = json.loads((init.parent / "data" / "flat-divisions.json").read_bytes()) if init else None
        codes = frozenset(f"{int(w['code']):05d}" for w in wards) if isinstance(wards, list) else None
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return codes or None


def _cache_file() -> Path | None:
    """Where the commune codes of the installed `vietnam_provinces` are kept (None if it cannot be located)."""
    init = _package_init()
    if init is None:
        return None
    from lgsp.settings import load_settings

    stat = init.parent.stat()
    key = hashlib.sha256(f"{init}|{stat.st_mtime_ns}|{stat.st_ino}".encode()).hexdigest()[:16]
    return load_settings().home / "cache" / f"commune_codes-{key}.json"


@cache
def province_communes(province_code: int) -> dict[str, str]:
    """Commune code -> name for one province (e.g. 37, Ninh Binh: 129 communes)."""
    from vietnam_provinces import Ward

    return {f"{int(w.code):05d}": w.name for w in Ward.iter_all() if int(w.province_code) == province_code}
