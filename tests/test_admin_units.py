"""The official administrative units are a dataset like any other: extract -> validate -> load.

The `reference` system serves the installed `vietnam-provinces` package in-process;
the run lands in `core_admin_unit` on SQLite and on a real PostgreSQL.
"""
from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from catalog import load_catalog
from quality.reference import commune_codes, province_communes

COMMUNE_LEVELS = {"commune", "ward", "special_zone"}


def _units(wh: Any) -> list[Any]:
    table = wh.core["admin_unit"]
    with wh.engine.connect() as conn:
        return conn.execute(sa.select(table.c.code, table.c.name, table.c.level, table.c.province_code,
                                      table.c.province_name)).all()


def test_admin_units_land_every_official_unit_and_a_rerun_changes_nothing(lgsp_env: Any) -> None:
    from lgsp import runner

    first = runner.run_pipeline("admin_units", settings=lgsp_env)
    assert first["rows_pulled"] == first["rows_landed"] == 34 + 3321
    assert first["rows_quarantined"] == 0
    wh = runner.open_warehouse(settings=lgsp_env)
    assert wh.count("lgsp_quarantine") == 0
    units = _units(wh)
    provinces = [u for u in units if u.level == "province"]
    communes = [u for u in units if u.level in COMMUNE_LEVELS]
    assert len(provinces) == 34 and len(communes) == 3321 and len(units) == 34 + 3321
    assert {u.code for u in communes} == commune_codes()
    assert all(len(u.code) == 2 and u.province_code == u.code for u in provinces)
    names = {u.code: u.name for u in provinces}
    assert all(u.province_name == names[u.province_code] for u in communes)
    ninh_binh = {u.code: u.name for u in communes if u.province_code == "37"}
    assert len(ninh_binh) == 129 and ninh_binh == province_communes(37)
    assert names["37"] == "Ninh Bình"

    second = runner.run_pipeline("admin_units", settings=lgsp_env)
    assert second["rows_landed"] == 34 + 3321 and second["rows_changed"] == 0
    assert len(_units(wh)) == 34 + 3321


def test_reference_system_is_up_and_refuses_to_receive() -> None:
    from connectors import FatalError, open_transport
    from connectors.health import probe

    system = load_catalog().systems["reference"]
    result = probe(system)
    assert (result.ok, result.status, result.latency_ms, result.detail) == (True, "up", 0.0,
                                                                          "in-process reference data")
    transport = open_transport(system, operation="admin_units")
    with pytest.raises(FatalError, match="reference data cannot receive"):
        transport.send({"data": []}, "key-1")
    transport.close()


def test_unknown_reference_operation_is_fatal_and_named() -> None:
    from connectors import FatalError, open_transport

    catalog = load_catalog()
    source = catalog.pipelines["admin_units"].source.model_copy(update={"operation": "districts"})
    transport = open_transport(catalog.systems["reference"], source)
    with pytest.raises(FatalError, match=r"reference districts: unknown reference operation .* serves: admin_units"):
        transport.call({})
