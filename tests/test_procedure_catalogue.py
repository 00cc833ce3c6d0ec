"""The procedures with no administrative boundary (thủ tục không phụ thuộc địa giới hành chính): the DVCQG
catalogue says which (`KhongPhuThuocDiaGioi`), the `dvcqg_procedures` pipeline keeps it as `procedure.boundary_free`,
and anyone counts them through the open shared dataset (CKAN `datastore_search` with `filters`, the REST records
filter). When the province widens its list (Binh Duong: 275 procedures, then 570), the next incremental sync
counts the new ones and `lgsp record` shows when each changed. The real sandbox portal over loopback, the real
runner and gateway; SQLite and a real PostgreSQL.
"""
from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
from typer.testing import CliRunner

from catalog import load_catalog
from lgsp.cli import app as lgsp_app


def _count(base: str) -> int:
    """The boundary-free procedures, as any reader counts them (no key: `procedure` is open)."""
    answer = requests.get(f"{base}/api/3/action/datastore_search", timeout=60, params={
        "resource_id": "procedure", "filters": json.dumps({"boundary_free": True}), "limit": 0})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["result"]["total"])


def widen(sandbox: Any, count: int) -> list[dict[str, Any]]:
    """The portal marks `count` more procedures as having no administrative boundary, each changed after every
    other procedure (so the next incremental sync brings them); returns those procedures."""
    from sandbox.dvcqg_rest import parse_portal_time, portal_time

    portal = sandbox.dvcqg.procedures
    widened = [p for p in portal if not p["KhongPhuThuocDiaGioi"]][:count]
    latest = max(parse_portal_time(p["NgayCapNhat"]) for p in portal)
    with sandbox.dvcqg.lock:
        for i, procedure in enumerate(widened):
            procedure.update(KhongPhuThuocDiaGioi=True, NgayCapNhat=portal_time(latest + timedelta(hours=2, minutes=i)))
        portal.sort(key=lambda p: (p["NgayCapNhat"], p["MaTTHC"]))
    return widened


def test_procedures_with_no_administrative_boundary_are_counted_and_the_count_follows_the_portal(
        database_url: str, tmp_path: Path) -> None:
    from gateway.api import create_app
    from gateway.settings import load_gateway_settings
    from lgsp import runner
    from sandbox import DATASET_KEYS, start_sandbox
    from test_gateway import gateway_env, loaded_registry, running

    sandbox = start_sandbox(seed=11, citizens=5, dossiers=5, sizes=dict.fromkeys(DATASET_KEYS, 0) | {"procedure": 120})
    try:
        with gateway_env(sandbox, tmp_path / "home", database_url):
            catalog = load_catalog()
            registry = loaded_registry(database_url, catalog, ["dvcqg_procedures"])
            portal = sandbox.dvcqg.procedures
            before = sorted(p["MaTTHC"] for p in portal if p["KhongPhuThuocDiaGioi"])
            assert 0 < len(before) < len(portal) and all(isinstance(p["KhongPhuThuocDiaGioi"], bool) for p in portal)
            settings = dataclasses.replace(load_gateway_settings(database_url), principal_cache_s=0.0)
            try:
                with running(create_app(settings, catalog)) as base:
                    assert _count(base) == len(before)
                    listed = requests.get(f"{base}/api/v1/datasets/procedure/records", timeout=60,
                                          params={"boundary_free": "true", "limit": 1000}).json()["records"]
                    assert sorted(r["procedure_code"] for r in listed) == before

                    widened = widen(sandbox, 10)  # the province widens it
                    synced = runner.run_pipeline("dvcqg_procedures")
                    assert synced["rows_changed"] == 10 and synced["rows_quarantined"] == 0, synced  # (+ lookback)
                    assert _count(base) == len(before) + 10
            finally:
                registry.engine.dispose()
            shown = CliRunner().invoke(lgsp_app, ["record", "procedure", widened[0]["MaTTHC"], "--json"])
            assert shown.exit_code == 0, shown.output
            versions = json.loads(shown.stdout.splitlines()[-1])["versions"]
            assert [v["values"]["boundary_free"] for v in versions] == [False, True], versions
    finally:
        sandbox.stop()
