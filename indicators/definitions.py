"""Indicator definitions as computed: one row per indicator version in `mart_indicator_definition`.

The row keeps the definition (JSON) and its hash. Computing an indicator whose
definition changed while its version did not is refused: the old values would
silently change meaning. Bump `version` in catalog/indicators.yaml instead; the
old version's values stay in the mart and stay readable (`read_indicator(...,
version=1)`). Adding a unit level (`units`) is not such a change: the values
computed keep their meaning, the version stays, and the next computation counts
every period again, the new level's units included. The row also keeps the
newest `_loaded_at` seen by the last computation, from which late-arriving data
is found, and, for an indicator `as_of: period_end`, until when its ended
periods are settled.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import IndicatorSpec
from warehouse import Warehouse

DEFINITION_FIELDS = {"dataset", "date_column", "as_of", "units", "measure", "denominator", "numerator", "sum_seconds",
                     "value_scale"}
"""What a value depends on; names, description and periods may change without a new version. A field not set
(`as_of`, `date_column`) is left out, so the hash of a definition stored before the field existed still holds."""


class IndicatorVersionError(RuntimeError):
    """The definition of an indicator changed but its version did not."""


def definition(spec: IndicatorSpec) -> dict[str, Any]:
    """The parts of the spec a value depends on, e.g. ``{'dataset': 'dossier', 'numerator': {...}, ...}``."""
    dumped = spec.model_dump(mode="json", include=DEFINITION_FIELDS)
    return {k: v for k, v in dumped.items() if v is not None or k not in ("as_of", "date_column")}


def definition_hash(spec: IndicatorSpec) -> str:
    """SHA-256 of the definition (sorted JSON)."""
    return hashlib.sha256(json.dumps(definition(spec), sort_keys=True).encode()).hexdigest()


def widens(stored: Mapping[str, Any], spec: IndicatorSpec) -> bool:
    """Whether `spec` is the `stored` definition with unit levels added, the others as they were: every value
    computed keeps its meaning, so the version stays (the new levels are counted for every period)."""
    before = json.loads(stored["definition"]).get("units") or {}
    now = definition(spec)["units"]
    if not before.keys() < now.keys() or any(now[level] != unit for level, unit in before.items()):
        return False
    narrower = spec.model_copy(update={"units": {level: spec.units[level] for level in before}})  # type: ignore[misc]
    return definition_hash(narrower) == stored["definition_hash"]


def widened(wh: Warehouse, spec: IndicatorSpec) -> bool:
    """Whether this version was computed with fewer unit levels than it now has (`widens`)."""
    table = wh.system["mart_indicator_definition"]
    with wh.engine.connect() as conn:
        stored = conn.execute(sa.select(table).where(table.c.indicator == spec.name,
                                                     table.c.version == spec.version)).mappings().first()
    return stored is not None and stored["definition_hash"] != definition_hash(spec) and widens(stored, spec)


def register(conn: sa.Connection, wh: Warehouse, spec: IndicatorSpec) -> dict[str, Any]:
    """Record this version's definition (first time), or check it is unchanged (or only widened by unit levels:
    then recorded as it is now); returns the stored row.

    Raises:
        IndicatorVersionError: the stored definition of this version differs.
    """
    table = wh.system["mart_indicator_definition"]
    key = (table.c.indicator == spec.name, table.c.version == spec.version)
    stored = conn.execute(sa.select(table).where(*key)).mappings().first()
    digest = definition_hash(spec)
    if stored is not None and stored["definition_hash"] != digest and widens(stored, spec):
        wider = {"definition": json.dumps(definition(spec), ensure_ascii=False, sort_keys=True),
                 "definition_hash": digest}
        conn.execute(table.update().where(*key).values(**wider))
        stored = {**stored, **wider}
    if stored is None:
        row = {"indicator": spec.name, "version": spec.version, "name_vi": spec.name_vi, "name_en": spec.name_en,
               "definition": json.dumps(definition(spec), ensure_ascii=False, sort_keys=True),
               "definition_hash": digest, "registered_at": datetime.now(timezone.utc), "data_loaded_until": None,
               "settled_until": None}
        conn.execute(table.insert().values(**row))
        return row
    if stored["definition_hash"] != digest:
        raise IndicatorVersionError(
            f"indicator '{spec.name}' version {spec.version} was computed with another definition "
            f"(stored: {stored['definition']}; now: {json.dumps(definition(spec), ensure_ascii=False)}). "
            f"Bump its version in catalog/indicators.yaml (to {spec.version + 1}) so the values of version "
            f"{spec.version} stay readable as they were")
    if (stored["name_vi"], stored["name_en"]) != (spec.name_vi, spec.name_en):
        conn.execute(table.update().where(*key).values(name_vi=spec.name_vi, name_en=spec.name_en))
    return dict(stored)


def set_watermark(conn: sa.Connection, wh: Warehouse, spec: IndicatorSpec, loaded_until: datetime | None) -> None:
    """Remember the newest `_loaded_at` the computation has seen."""
    table = wh.system["mart_indicator_definition"]
    conn.execute(table.update().where(table.c.indicator == spec.name, table.c.version == spec.version)
                 .values(data_loaded_until=loaded_until))


def settled_until(wh: Warehouse, spec: IndicatorSpec) -> datetime | None:
    """Until when every ended period of an indicator `as_of: period_end` is counted at its end (None: none)."""
    table = wh.system["mart_indicator_definition"]
    with wh.engine.connect() as conn:
        found = conn.execute(sa.select(table.c.settled_until).where(
            table.c.indicator == spec.name, table.c.version == spec.version)).scalar()
    return None if found is None else (found if found.tzinfo else found.replace(tzinfo=timezone.utc))


def settle(conn: sa.Connection, wh: Warehouse, spec: IndicatorSpec, until: datetime | None) -> None:
    """Remember that every period ended by `until` is counted at its end."""
    table = wh.system["mart_indicator_definition"]
    conn.execute(table.update().where(table.c.indicator == spec.name, table.c.version == spec.version)
                 .values(settled_until=until))


def stored_definitions(wh: Warehouse) -> list[dict[str, Any]]:
    """Every registered indicator version (old ones included), by indicator and version."""
    table = wh.system["mart_indicator_definition"]
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(table).order_by(table.c.indicator, table.c.version)).mappings().all()
    return [{**dict(r), "definition": json.loads(r["definition"])} for r in rows]
