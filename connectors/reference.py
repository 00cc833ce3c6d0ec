"""Reference transport: official reference data served in-process from an installed package.

A system with `protocol: reference` is not a peer on the network: its
endpoint names a Python distribution (`package:vietnam-provinces`) and each
operation is a list of records built from it. It goes through the same
pipeline path as any other source (extract -> validate -> load), so the
reference data is landed, checked and loaded like every dataset, with
lineage.

Example answer (operation `admin_units`, one page, paginator `single`):
    {"items": [
        {"code": "37", "name": "Ninh Bình", "codename": "ninh_binh", "level": "province",
         "division_type": "tỉnh", "province_code": "37", "province_name": "Ninh Bình"},
        {"code": "14329", "name": "Phường Hoa Lư", "codename": "phuong_hoa_lu", "level": "ward",
         "division_type": "phường", "province_code": "37", "province_name": "Ninh Bình"}, ...]}
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from catalog.models import SystemSpec
from connectors.errors import FatalError

PACKAGE = "package:vietnam-provinces"
"""The endpoint of the official administrative units (2025 codes: 34 provinces, 3,321 communes)."""

LEVELS: dict[str, str] = {
    "tỉnh": "province",
    "thành phố trung ương": "province",
    "xã": "commune",
    "phường": "ward",
    "đặc khu": "special_zone",
}
"""The package's division type (its Vietnamese value) -> the dataset's `level`."""


def admin_units() -> list[dict[str, Any]]:
    """Every province (2-digit code), then every commune-level unit (5-digit code), by code."""
    from vietnam_provinces import Province, Ward

    provinces = {int(p.code): p for p in Province.iter_all()}
    units = [_unit(f"{code:02d}", p.name, p.codename, p.division_type.value, p)
             for code, p in sorted(provinces.items())]
    for ward in sorted(Ward.iter_all(), key=lambda w: int(w.code)):
        province = provinces[int(ward.province_code)]
        units.append(_unit(f"{int(ward.code):05d}", ward.name, ward.codename, ward.division_type.value, province))
    return units


def _unit(code: str, name: str, codename: str, division_type: str, province: Any) -> dict[str, Any]:
    return {"code": code, "name": name, "codename": codename, "level": LEVELS[division_type],
            "division_type": division_type, "province_code": f"{int(province.code):02d}",
            "province_name": province.name}


OPERATIONS: dict[str, dict[str, Callable[[], list[dict[str, Any]]]]] = {
    PACKAGE: {"admin_units": admin_units},
}
"""Endpoint -> operation -> the records it serves."""


class ReferenceTransport:
    """Serves one operation of a reference package as a single page `{"items": [...]}`.

    Reference data is read-only: `send` refuses, so a feed cannot target it.
    """

    def __init__(self, system: SystemSpec, endpoint: str, operation: str) -> None:
        self.system, self.operation = system, operation
        self.endpoint = endpoint
        if endpoint not in OPERATIONS:
            raise FatalError(system.name, operation, f"no reference data at endpoint {endpoint!r}",
                             f"set the system's endpoint to one of: {', '.join(sorted(OPERATIONS))}")

    def call(self, params: dict[str, Any]) -> dict[str, Any]:
        """The whole reference list in one page (no cursor: reference data is pulled in full)."""
        operations = OPERATIONS[self.endpoint]
        if self.operation not in operations:
            raise FatalError(self.system.name, self.operation, f"unknown reference operation {self.operation!r}",
                             f"{self.endpoint} serves: {', '.join(sorted(operations))}")
        return {"items": operations[self.operation]()}

    def send(self, payload: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """Always refuses: reference data has no receiver."""
        raise FatalError(self.system.name, self.operation, "reference data cannot receive messages",
                         "a feed must target a rest or soap system, not a protocol: reference one")

    def close(self) -> None:
        """Nothing to release (no connection)."""
