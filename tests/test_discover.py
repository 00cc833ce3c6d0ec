"""`lgsp discover`: a dataset and its pipeline drafted from what a system answers, against the real sandbox.

The drafts are checked against what the team wrote by hand: the shipped catalog's pipelines and
datasets, and docs/adding-a-system.md's health-insurance blocks; the drafted health-insurance
pipeline is written into a catalog and synced, and its copy equals the sandbox's truth.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from catalog import load_catalog
from catalog.loader import CATALOG_DIR
from catalog.models import RetrySpec
from lgsp.discover import DiscoverError, discover, guess_key, guess_columns, shape_pattern, value_kind

# every pipeline of the shipped catalog whose source answers as the sandbox serves it (the DVCQG renames its
# fields, admin_units reads a package)
PIPELINES = ["population_citizens", "tthc_dossiers", "civil_status_events", "civil_status_household_members",
             "land_parcels", "business_enterprises", "civil_servants", "documents"]


def _catalog_with_system(target: Path, system: str) -> Path:
    """A copy of the shipped catalog in `target` with one more system (its block in systems.yaml)."""
    target.mkdir()
    for source in CATALOG_DIR.glob("*.yaml"):
        (target / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    with (target / "systems.yaml").open("a", encoding="utf-8") as handle:
        handle.write("\n" + system)
    return target


def _catalog_with_health_insurance(target: Path) -> Any:
    """A copy of the shipped catalog with docs/adding-a-system.md's system block (and only it) appended."""
    from tests.test_adding_a_system import yaml_blocks

    (system,) = [text for name, text in yaml_blocks() if name == "systems.yaml"]
    return load_catalog(_catalog_with_system(target, system))


def _district_system(target: Path, base: str) -> Path:
    """The catalog with the district's one-stop system (HoSoPeer) at `base`."""
    return _catalog_with_system(target, f"  mot_cua_huyen:\n    title: A district's one-stop system\n"
                                        f"    protocol: rest\n    endpoint: {base}\n")


def drafted_district(target: Path, base: str, mode: str) -> Path:
    """The catalog with the district's system at `base` and its `ho_so` dataset drafted by `lgsp discover`,
    written by `mode` (merge, history)."""
    from lgsp.discover import discover, write_draft

    _district_system(target, base)
    write_draft(discover(load_catalog(target), "mot_cua_huyen", "/api/hoso", dataset="ho_so"), target)
    datasets = (target / "datasets.yaml").read_text(encoding="utf-8")
    (target / "datasets.yaml").write_text(datasets.replace("\n  ho_so:\n", f"\n  ho_so:\n    write_mode: {mode}\n"),
                                          encoding="utf-8")
    return target


@pytest.mark.parametrize("name", PIPELINES)
def test_drafts_match_the_shipped_catalog(name: str, sandbox_env: Any) -> None:
    catalog = load_catalog()
    pipeline = catalog.pipelines[name]
    dataset = catalog.datasets[pipeline.dataset]
    draft = discover(catalog, pipeline.source.system, pipeline.source.operation, dataset=pipeline.dataset)
    assert draft.pipeline == name
    assert {c: g.type for c, g in draft.columns.items()} == {c: s.type for c, s in dataset.columns.items()}
    assert (draft.key, draft.cursor_field) == (dataset.key, dataset.cursor_field)
    drafted = draft.dataset_spec()
    for column, spec in dataset.columns.items():  # what the team requires, the draft requires (or says why not)
        if spec.required and not drafted.columns[column].required:
            assert any(note.startswith(f"column {column}: empty in") for note in draft.notes), column
    source = draft.pipeline_spec().source
    shipped = pipeline.source
    assert (source.records_field, source.cursor_param, source.total_field) == \
        (shipped.records_field, shipped.cursor_param, shipped.total_field)
    assert source.paginator.type == shipped.paginator.type
    assert source.until_param == shipped.until_param
    for param, value in shipped.paginator.params.items():
        if param not in ("page_size", "limit"):
            assert source.paginator.params.get(param) == value, param
    checks = [dict(c.model_dump()) for c in drafted.checks]
    for check in dataset.checks:  # the identity rules the team declared are found (enums are a judgement of the team)
        if check.rule in ("cccd", "commune_code", "tax_code", "email"):
            assert check.model_dump() in checks, check
    assert draft.sampled == len(sandbox_env.data.records(pipeline.dataset))  # every record served (< 1,000)


def test_a_soap_system_lists_its_operations_and_drafts_with_its_declared_types(sandbox_env: Any) -> None:
    result = CliRunner().invoke(_app(), ["discover", "population"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "ListChangedCitizens(since: xsd:dateTime, page: xsd:integer, page_size: xsd:integer" in result.output
    draft = discover(load_catalog(), "population", "ListChangedCitizens")
    assert {c.name: c.declared for c in draft.columns.values()}["birth_date"] == "date"
    assert draft.source["cursor_param"] == "since" and draft.source["until_param"] == "until"
    with pytest.raises(DiscoverError, match="no operation 'ListCitizens'.*ListChangedCitizens"):
        discover(load_catalog(), "population", "ListCitizens")


def test_the_drafted_pipeline_syncs_every_record(tmp_path: Path, lgsp_env: Any, sandbox_handle: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp import runner
    from tests.test_adding_a_system import yaml_blocks
    from tests.test_sync_truth import assert_identical_to_truth

    target = tmp_path / "catalog"
    _catalog_with_health_insurance(target)
    monkeypatch.setenv("LGSP_CATALOG_DIR", str(target))
    result = CliRunner().invoke(_app(), ["discover", "health_insurance", "/api/cards", "--dataset",
                                         "health_insurance_card", "--share", "--write"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert os.environ["LGSP_HEALTH_INSURANCE_API_KEY"] not in result.output
    assert "# catalog/datasets.yaml\n  health_insurance_card:\n" in result.output
    catalog = load_catalog(target)
    # what the guide's author wrote by hand, the draft found by asking
    guide = {name: yaml.safe_load(text) for name, text in
             [(n, f"{n.split('.')[0]}:\n{t}") for n, t in yaml_blocks() if n != "systems.yaml"]}
    written = guide["datasets.yaml"]["datasets"]["health_insurance_card"]
    drafted = catalog.datasets["health_insurance_card"]
    assert {n: (c.type, c.required) for n, c in drafted.columns.items()} == \
        {n: (c["type"], c["required"]) for n, c in written["columns"].items()}
    assert (drafted.key, drafted.cursor_field) == (written["key"], written["cursor_field"])
    assert all(check in [c.model_dump() for c in drafted.checks] for check in written["checks"])
    pipeline = catalog.pipelines["health_insurance_cards"]
    by_hand = guide["pipelines.yaml"]["pipelines"]["health_insurance_cards"]["source"]
    assert pipeline.source.model_dump(exclude_defaults=True) == by_hand

    outcome = runner.run_pipeline("health_insurance_cards", catalog=catalog, settings=lgsp_env)
    assert outcome["rows_pulled"] == len(sandbox_handle.data.records("health_insurance_card"))
    assert outcome["rows_quarantined"] == len(sandbox_handle.data.defects("health_insurance_card")) > 0
    assert_identical_to_truth(runner.open_warehouse(catalog, lgsp_env), catalog, sandbox_handle,
                              "health_insurance_cards")

    again = CliRunner().invoke(_app(), ["discover", "health_insurance", "/api/cards", "--dataset",
                                        "health_insurance_card", "--share", "--write"], env={"COLUMNS": "300"})
    assert again.exit_code == 1
    assert "already has dataset health_insurance_card and pipeline health_insurance_cards and shared dataset " \
        "health_insurance_card" in " ".join(again.output.split())
    assert load_catalog(target).datasets["health_insurance_card"] == drafted  # nothing appended twice
    _read_through_the_gateway(catalog, sandbox_handle, tmp_path, lgsp_env.database_url)


def _read_through_the_gateway(catalog: Any, sandbox_handle: Any, tmp_path: Path, url: str) -> None:
    """The drafted sharing entry, served: restricted, the personal columns protected unless granted in clear."""
    import dataclasses

    import requests

    from gateway.agencies import AgencyRegistry
    from gateway.api import create_app
    from gateway.service import _write_engine, prepare_database
    from gateway.settings import load_gateway_settings
    from test_gateway import gateway_env, running

    shared = catalog.sharing["health_insurance_card"]
    assert (shared.access, shared.personal) == ("restricted", {"personal_id": "pseudonym", "full_name": "mask",
                                                               "birth_date": "withhold"})
    assert shared.columns == list(catalog.datasets["health_insurance_card"].columns)
    assert {"card_no", "sex", "commune_code", "valid_from", "valid_to", "updated_at"} <= set(shared.filterable)
    assert not set(shared.filterable) & set(shared.personal)
    with gateway_env(sandbox_handle, tmp_path / "home", url):
        prepare_database(url, catalog)
        registry = AgencyRegistry(_write_engine(url), catalog)
        registry.add_agency("so_y_te", "Sở Y tế", 1000.0)
        key = registry.issue_api_key("so_y_te")
        settings = dataclasses.replace(load_gateway_settings(url), principal_cache_s=0.0)  # grants seen at once
        with running(create_app(settings, catalog)) as base:
            path = f"{base}/api/v1/datasets/health_insurance_card/records"
            assert requests.get(path, headers={"X-API-Key": key}, timeout=30).status_code == 403, "restricted"
            registry.grant("so_y_te", "health_insurance_card")
            truth = {r["card_no"]: r for r in sandbox_handle.data.records("health_insurance_card")}
            answer = requests.get(path, headers={"X-API-Key": key}, params={"limit": 50}, timeout=30)
            records = answer.json()["records"]
            assert len(records) == 50
            for record in records:
                raw = truth[record["card_no"]]
                assert record["birth_date"] is None and record["personal_id"] != raw["personal_id"]
                assert record["full_name"] == "*" * (len(raw["full_name"]) - 3) + raw["full_name"][-3:]
            registry.grant("so_y_te", "health_insurance_card", personal=["full_name"])
            records = requests.get(path, headers={"X-API-Key": key}, params={"limit": 5}, timeout=30).json()["records"]
            assert all(r["full_name"] == truth[r["card_no"]]["full_name"] for r in records), "granted in clear"


def test_a_faulty_peer_gives_the_same_draft_or_a_clear_error(tmp_path: Path, sandbox_env: Any) -> None:
    catalog = _catalog_with_health_insurance(tmp_path / "catalog")
    clean = discover(catalog, "health_insurance", "/api/cards", sample=200)
    catalog.systems["health_insurance"] = catalog.systems["health_insurance"].model_copy(
        update={"retry": RetrySpec(attempts=8, backoff_s=0.01, max_backoff_s=0.05)})
    try:
        sandbox_env.faults.error_rate = 0.3  # 503s: every probe is retried as a sync retries
        faulty = discover(catalog, "health_insurance", "/api/cards", sample=200)
        assert sandbox_env.faults.injected > 0
        assert faulty.text().splitlines()[1:-1] == clean.text().splitlines()[1:-1]  # all but the count of calls
        sandbox_env.faults.clear()
        sandbox_env.faults.malformed_rate = 1.0
        with pytest.raises(DiscoverError, match="health_insurance"):
            discover(catalog, "health_insurance", "/api/cards")
    finally:
        sandbox_env.faults.clear()
    with pytest.raises(DiscoverError, match=r"no array of records \(its fields: status, system\).*--param"):
        discover(catalog, "health_insurance", "/health")
    with pytest.raises(DiscoverError, match="personal_id must be 12 digits.*give the parameters it needs with --param"):
        discover(catalog, "population", "GetCitizen")  # a lookup of one record, asked with no ID
    with pytest.raises(DiscoverError, match=r"does not fit the WSDL: Missing element report"):
        discover(catalog, "reporting", "SubmitIndicatorReport")  # zeep refuses before sending: said, not a traceback
    with pytest.raises(DiscoverError, match="no system 'bhyt'.*docs/adding-a-system.md"):
        discover(catalog, "bhyt", "/api/cards")
    result = CliRunner().invoke(_app(), ["discover", "tthc"], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and "tthc serves no OpenAPI document (asked /openapi.json" in \
        " ".join(result.output.split()) and "name the path" in result.output


def test_values_columns_keys_and_shapes() -> None:
    from datetime import date

    assert [value_kind(v) for v in ("2025-08-01", "2025-08-01T09:30:00+07:00", "2025-13-45", "037190012345",
                                    12, 1.5, True, date(2025, 1, 1), {"a": 1}, "", None)] == \
        ["date", "timestamp", "string", "string", "integer", "float", "boolean", "date", "nested", None, None]
    records = [{"a": i % 3, "b": i // 3, "n": 1.0 if i else 2, "t": "x", "o": {"k": i}} for i in range(9)]
    columns, nested = guess_columns(records)
    assert nested == ["o"] and columns["n"].type == "float" and columns["a"].type == "integer"
    assert guess_key(records, columns)[0] == ["a", "b"]  # no single column is unique: the pair
    with pytest.raises(DiscoverError, match="no column"):
        guess_key([{"x": 1}, {"x": 1}], guess_columns([{"x": 1}, {"x": 1}])[0])
    assert shape_pattern(["GD4370123456789", "HN3370412345678"]) == "[A-Z]{2}[0-9]{13}"
    assert shape_pattern(["1553/BTC-TCCB", "12/UBND-VP"]) == "[0-9]{2,4}/[A-Z]{3,4}-[A-Z]{2,4}"
    assert shape_pattern(["a.b", "c d e f"]) is None
    from lgsp.discover import column_names

    assert column_names(["MaTTHC", "ngàyCấp", "Name", "name", "2fa", "đơnVị", "ok_name"]) == {
        "MaTTHC": "ma_tthc", "ngàyCấp": "ngay_cap", "Name": "name_2", "2fa": "f_2fa", "đơnVị": "don_vi"}


def _app() -> Any:
    from lgsp.cli import app

    return app


@pytest.mark.parametrize("name", ["population_citizens", "tthc_dossiers"])
def test_the_until_parameters_found_backfill_a_closed_window(name: str, lgsp_env: Any, sandbox_handle: Any) -> None:
    """`until_param` of these two was found by `lgsp discover` (the catalog had none): a backfill pulls its window."""
    from datetime import datetime, timezone

    import pandas as pd

    from lgsp import runner

    catalog = load_catalog()
    dataset = catalog.pipelines[name].dataset
    stamps = pd.to_datetime(pd.Series([r["updated_at"] for r in sandbox_handle.data.records(dataset)]), utc=True,
                            format="ISO8601")
    since, until = datetime(2025, 8, 1, tzinfo=timezone.utc), datetime(2025, 8, 15, tzinfo=timezone.utc)
    inside = int(((stamps >= since) & (stamps < until)).sum())
    assert 0 < inside < len(stamps)
    outcome = runner.run_pipeline(name, since=since, until=until, settings=lgsp_env)
    assert (outcome["mode"], outcome["rows_pulled"]) == ("backfill", inside)


# what the sandbox sends beyond the shipped catalog, or leaves empty where it requires a value (its defects)
EXPECTED_WARNINGS = {"documents": {"summary"}}


@pytest.mark.parametrize("name", [*PIPELINES, "dvcqg_procedures", "admin_units"])
def test_every_shipped_pipeline_holds_against_its_system(name: str, sandbox_env: Any) -> None:
    from lgsp.discover import compare

    result = compare(load_catalog(), name)
    assert result.holds and result.sampled > 0, result.as_dict()
    assert {f.subject for f in result.findings if f.severity != "info"} == EXPECTED_WARNINGS.get(name, set())
    for finding in result.findings:
        if finding.severity == "info":  # only the rules quarantining the sandbox's defects
            assert finding.said.startswith("rejects ") and ":" in finding.subject


def test_every_pipeline_at_once_from_the_command_line(sandbox_env: Any) -> None:
    import json

    result = CliRunner().invoke(_app(), ["discover", "--compare", "all", "--sample", "200", "--json"])
    assert result.exit_code == 0, result.output
    said = json.loads(result.output)
    assert [r["pipeline"] for r in said] == list(load_catalog().pipelines) and all(r["holds"] for r in said)
    shown = CliRunner().invoke(_app(), ["discover", "--compare", "all", "--sample", "200"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and "population_citizens: 200 record(s) of population" in shown.output
    assert "admin_units: 200 record(s) of reference: the system answers as the catalog says" in shown.output


def _edited_catalog(target: Path, datasets: Any = None, pipelines: Any = None) -> Path:
    target.mkdir()
    for source in CATALOG_DIR.glob("*.yaml"):
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
        edit = {"datasets.yaml": datasets, "pipelines.yaml": pipelines}.get(source.name)
        if edit is not None:
            edit(data)
        (target / source.name).write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return target


def test_a_changed_contract_is_found_before_a_sync_meets_it(tmp_path: Path, sandbox_env: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp.discover import compare

    def datasets(data: dict[str, Any]) -> None:
        citizen = data["datasets"]["citizen"]
        citizen["columns"]["nickname"] = {"type": "string", "required": True}  # the source never sends it
        citizen["columns"]["birth_date"]["type"] = "integer"  # the source sends dates
        del citizen["columns"]["phone"]  # the source sends it: it looks new
        citizen["checks"] = [c for c in citizen["checks"] if c.get("column") != "phone"]
        data["datasets"]["dossier"]["expectations"]["max_quarantine_rate"] = 0.001

    def pipelines(data: dict[str, Any]) -> None:
        data["pipelines"]["tthc_dossiers"]["source"]["cursor_param"] = "changed_after"  # the source ignores it

    catalog = load_catalog(_edited_catalog(tmp_path / "catalog", datasets, pipelines))
    citizens = compare(catalog, "population_citizens")
    found = {f.subject: (f.severity, f.said) for f in citizens.findings}
    assert not citizens.holds
    assert found["nickname"][0] == "error" and "in none of the 600 records" in found["nickname"][1]
    assert found["birth_date"] == ("error", "600 of 600 values are not integers (the source sends dates): "
                                            "a sync quarantines them")
    assert found["phone"][0] == "warning" and found["phone"][1].startswith("sent (string) but not declared")
    dossiers = compare(catalog, "tthc_dossiers")
    found = {f.subject: (f.severity, f.said) for f in dossiers.findings}
    assert found["changed_after"][0] == "warning" and "every incremental sync re-reads everything" in \
        found["changed_after"][1]
    assert found["max_quarantine_rate"][0] == "error" and not dossiers.holds

    monkeypatch.setenv("LGSP_CATALOG_DIR", str(tmp_path / "catalog"))
    result = CliRunner().invoke(_app(), ["discover", "--compare", "population_citizens", "--json"])
    assert result.exit_code == 1
    import json

    assert json.loads(result.output)["holds"] is False
    with pytest.raises(DiscoverError, match="no pipeline 'citizens'"):
        compare(catalog, "citizens")


def test_another_provinces_lgsp_is_a_source_drafted_and_synced(tmp_path: Path, sandbox_handle: Any, database_url: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Province A's sharing gateway, as province B's lgsp meets it: a REST system behind an API key. The draft finds
    its records, its `next_cursor` paging, and the filters on the records' own time (`updated_at__gte`,
    `updated_at__lt`); B's pipeline then copies what A grants it: the export of A's gateway, masked as granted."""
    import orjson
    import requests

    from gateway.api import create_app
    from gateway.settings import load_gateway_settings
    from lgsp import runner
    from lgsp.discover import write_draft
    from lgsp.settings import load_settings
    from test_gateway import gateway_env, loaded_registry, running

    with gateway_env(sandbox_handle, tmp_path / "province_a", database_url):
        registry = loaded_registry(database_url, load_catalog(), ("business_enterprises",))
        registry.add_agency("tinh_b", "Province B's lgsp", 1000.0)
        registry.grant("tinh_b", "enterprise")
        key = registry.issue_api_key("tinh_b")
        with running(create_app(load_gateway_settings(database_url), load_catalog())) as base:
            target = _catalog_with_system(tmp_path / "province_b_catalog", (
                f"  lgsp_a:\n    title: Province A's sharing gateway\n    protocol: rest\n    endpoint: {base}\n"
                "    auth: {type: api_key, header: X-API-Key, secret: env:LGSP_A_KEY}\n"))
            monkeypatch.setenv("LGSP_A_KEY", key)
            monkeypatch.setenv("LGSP_HOME", str(tmp_path / "province_b"))
            monkeypatch.setenv("LGSP_DATABASE_URL", f"sqlite:///{tmp_path / 'province_b.db'}")
            from lgsp.discover import list_operations

            listed = list_operations(load_catalog(target).systems["lgsp_a"])  # from A's /openapi.json
            assert [line for line in listed if line.startswith("GET /api/v1/datasets/enterprise/records  ")] == [
                "GET /api/v1/datasets/enterprise/records  Records of enterprise (restricted)  (query: fields, sort, "
                "q, limit, cursor, tax_code, tax_code__in, enterprise_type, enterprise_type__in, status, status__in, "
                "registered_on, registered_on__in, registered_on__gte, registered_on__gt, registered_on__lte, "
                "registered_on__lt, commune_code, commune_code__in, updated_at, updated_at__in, updated_at__gte, "
                "updated_at__gt, updated_at__lte, updated_at__lt)"]
            draft = discover(load_catalog(target), "lgsp_a", "/api/v1/datasets/enterprise/records",
                             dataset="a_enterprise", pipeline="a_enterprises")
            assert (draft.key, draft.cursor_field) == (["tax_code"], "updated_at")
            assert {k: draft.source.get(k) for k in ("records_field", "cursor_param", "until_param")} == \
                {"records_field": "records", "cursor_param": "updated_at__gte", "until_param": "updated_at__lt"}
            assert draft.source["paginator"] == {"type": "cursor", "token_field": "next_cursor", "token_param":
                                                 "cursor", "size_param": "limit", "page_size": 500}
            write_draft(draft, target)
            catalog = load_catalog(target)
            answer = requests.get(f"{base}/api/v1/datasets/enterprise/export", params={"format": "jsonl"},
                                  headers={"X-API-Key": key}, timeout=30)
            exported = {r["tax_code"]: r for r in map(orjson.loads, answer.content.splitlines())}
            first = runner.run_pipeline("a_enterprises", catalog=catalog, settings=load_settings())
            assert first["rows_pulled"] == len(exported) > 0
            copy = runner.open_warehouse(catalog, load_settings())
            with copy.engine.connect() as conn:
                held = {r["tax_code"]: r for r in conn.execute(sa.text("SELECT * FROM core_a_enterprise")).mappings()}
            assert set(held) == set(exported)
            for code, record in exported.items():  # as granted: the legal representative masked
                assert {c: held[code][c] for c in ("name", "status", "legal_representative")} == \
                    {c: record[c] for c in ("name", "status", "legal_representative")}
            again = runner.run_pipeline("a_enterprises", catalog=catalog, settings=load_settings())
            assert again["rows_changed"] == 0 and again["rows_pulled"] < first["rows_pulled"], "incremental"


class HoSoPeer:
    """A peer unlike the sandbox's: Vietnamese camel-case fields, records under `data.items`, `skip`/`take` paging
    it does not echo, `totalCount`, `TuNgay`/`DenNgay` windows, and a `DaXoa` (deleted) flag."""

    def __init__(self, n: int) -> None:
        from datetime import datetime, timedelta, timezone

        start = datetime(2025, 8, 1, tzinfo=timezone(timedelta(hours=7)))
        self.rows = [{"MaHoSo": f"HS-{i:05d}", "TenThuTuc": f"Thủ tục {i % 7}", "TrangThai": ["moi", "xong"][i % 2],
                      "NgayTiepNhan": (start + timedelta(hours=i)).date().isoformat(),
                      "DaXoa": i % 50 == 0, "NgayCapNhat": (start + timedelta(hours=i, minutes=7)).isoformat()}
                     for i in range(n)]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        from datetime import datetime
        from urllib.parse import parse_qs

        import orjson

        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        if environ["PATH_INFO"] != "/api/hoso":
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "not found"}']
        rows = self.rows
        try:
            if "TuNgay" in query:
                rows = [r for r in rows if self.when(r) >= self.asked(query["TuNgay"])]
            if "DenNgay" in query:
                rows = [r for r in rows if self.when(r) < self.asked(query["DenNgay"])]
        except ValueError as exc:
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [orjson.dumps({"success": False, "error": str(exc)})]
        skip, take = int(query.get("skip", 0)), min(int(query.get("take", 20)), 100)
        body = {"data": {"items": rows[skip:skip + take]}, "totalCount": len(rows), "success": True}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [orjson.dumps(body)]

    def when(self, row: dict[str, Any]) -> Any:
        """When the record last changed (what `TuNgay`/`DenNgay` filter on)."""
        from datetime import datetime

        return datetime.fromisoformat(row["NgayCapNhat"])

    def asked(self, text: str) -> Any:
        """The instant a `TuNgay`/`DenNgay` value means (ValueError: not one; answered 400)."""
        from datetime import datetime

        return datetime.fromisoformat(text.replace(" ", "+"))


def test_a_peer_with_its_own_field_names_and_deletion_flags_is_drafted_and_synced(
        tmp_path: Path, lgsp_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp import runner
    from lgsp.discover import write_draft
    from loopback import serving

    peer = HoSoPeer(230)
    with serving(peer) as base:
        target = _district_system(tmp_path / "catalog", base)
        draft = discover(load_catalog(target), "mot_cua_huyen", "/api/hoso", dataset="ho_so")
        assert draft.source["fields"] == {"MaHoSo": "ma_ho_so", "TenThuTuc": "ten_thu_tuc", "TrangThai": "trang_thai",
                                          "NgayTiepNhan": "ngay_tiep_nhan", "DaXoa": "da_xoa",
                                          "NgayCapNhat": "ngay_cap_nhat"}
        assert {k: draft.source.get(k) for k in ("records_field", "cursor_param", "until_param", "total_field")} == {
            "records_field": "data.items", "cursor_param": "TuNgay", "until_param": "DenNgay",
            "total_field": "totalCount"}
        assert draft.source["paginator"] == {"type": "offset", "offset_param": "skip", "limit_param": "take",
                                             "limit": 100, "total_field": "totalCount"}  # its cap
        assert (draft.key, draft.cursor_field, draft.delete_field) == (["ma_ho_so"], "ngay_cap_nhat", "da_xoa")
        assert {c: g.type for c, g in draft.columns.items()} == {
            "ma_ho_so": "string", "ten_thu_tuc": "string", "trang_thai": "string", "ngay_tiep_nhan": "date",
            "da_xoa": "boolean", "ngay_cap_nhat": "timestamp"}
        write_draft(draft, target)
        catalog = load_catalog(target)
        outcome = runner.run_pipeline("mot_cua_huyen_ho_sos", catalog=catalog, settings=lgsp_env)
        assert outcome["rows_pulled"] == 230  # the peer's pages are of 100 at most: its total told the end
        with runner.open_warehouse(catalog, lgsp_env).engine.connect() as conn:
            held = sorted(k for (k,) in conn.execute(sa.text("SELECT ma_ho_so FROM core_ho_so")))
        assert held == sorted(r["MaHoSo"] for r in peer.rows if not r["DaXoa"]), "deleted at the source: not held"


def test_a_source_that_ignores_the_cursor_is_noticed_by_the_sync_and_the_comparison(
        tmp_path: Path, lgsp_env: Any) -> None:
    """The district system renamed its window parameter: the catalog's `modifiedSince` is ignored, so each sync
    reads everything. Nothing is lost, but the peer is burdened: the batch says so, as `--compare` does."""
    from lgsp import runner
    from lgsp.discover import compare, write_draft
    from loopback import serving

    peer = HoSoPeer(120)
    with serving(peer) as base:
        target = _district_system(tmp_path / "catalog", base)
        draft = discover(load_catalog(target), "mot_cua_huyen", "/api/hoso", dataset="ho_so")
        draft.source["cursor_param"] = "modifiedSince"  # as the catalog had it before the system's upgrade
        del draft.source["until_param"]
        write_draft(draft, target)
        catalog = load_catalog(target)
        first = runner.run_pipeline("mot_cua_huyen_ho_sos", catalog=catalog, settings=lgsp_env)
        again = runner.run_pipeline("mot_cua_huyen_ho_sos", catalog=catalog, settings=lgsp_env)
        assert first["rows_pulled"] == 120 and again["mode"] == "incremental"
        assert again["rows_pulled"] == 120 and again["rows_changed"] == 0, "read again, nothing doubled"
        with runner.open_warehouse(catalog, lgsp_env).engine.connect() as conn:
            messages = [m for (m,) in conn.execute(sa.text(
                "SELECT message FROM lgsp_batch WHERE pipeline = 'mot_cua_huyen_ho_sos' ORDER BY started_at"))]
        assert messages[0] is None, "the first sync reads everything: nothing to say"
        assert "the source answered records changed before the window asked for (ngay_cap_nhat " \
            "2025-07-31T17:07:00+00:00 < modifiedSince 2025-08-05T" in messages[1]
        assert "it may no longer filter by modifiedSince" in messages[1]
        found = {f.subject: f.said for f in compare(catalog, "mot_cua_huyen_ho_sos").findings}
        assert "every incremental sync re-reads everything" in found["modifiedSince"]


def test_a_loaded_batch_keeps_what_its_validation_said(lgsp_env: Any, tmp_path: Path) -> None:
    """The DVCQG sends `CoQuanThucHien`, which this catalog does not map: the loaded batch says so (the load used to
    clear the message it was validated with)."""
    from lgsp import runner
    from lgsp.status import status_report

    target = _catalog_with_system(tmp_path / "catalog", "")
    pipelines = (target / "pipelines.yaml").read_text(encoding="utf-8")
    (target / "pipelines.yaml").write_text(pipelines.replace(" CoQuanThucHien: agency,", ""), encoding="utf-8")
    catalog = load_catalog(target)
    outcome = runner.run_pipeline("dvcqg_procedures", catalog=catalog, settings=lgsp_env)
    with runner.open_warehouse(catalog, lgsp_env).engine.connect() as conn:
        message = conn.execute(sa.text("SELECT message FROM lgsp_batch WHERE batch_id = :b"),
                               {"b": outcome["batch_id"]}).scalar_one()
    assert outcome["rows_landed"] == 120
    assert message.startswith("schema drift: new source field(s) ['CoQuanThucHien'] kept in _extras")
    said = [p for p in status_report(runner.open_warehouse(catalog, lgsp_env), catalog)["problems"]
            if p.get("pipeline") == "dvcqg_procedures"]
    assert [(p["severity"], p["problem"].split(" (")[0]) for p in said] == [
        ("warning", "dvcqg_procedures: last run loaded, and noted")], said


def _array_peer(n: int, clamp: bool = False, asked: list[dict[str, str]] | None = None) -> Any:
    """A peer whose answer is the records themselves (a JSON array), `page`/`per_page` (100 at most, no total),
    `since`; `/count` is 42. `clamp`: a page past the last answers the last again; `asked` collects each query."""
    from datetime import datetime, timedelta, timezone
    from urllib.parse import parse_qs

    import orjson

    start = datetime(2025, 9, 1, tzinfo=timezone.utc)
    rows = [{"id": i, "code": f"X{i:04d}", "updated_at": (start + timedelta(minutes=i)).isoformat()} for i in range(n)]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        start_response("200 OK", [("Content-Type", "application/json")])
        if environ["PATH_INFO"] == "/count":
            return [b"42"]
        chosen = [r for r in rows if "since" not in query or r["updated_at"] >= datetime.fromisoformat(
            query["since"].replace(" ", "+")).astimezone(timezone.utc).isoformat()]
        page, size = int(query.get("page", 1)), min(int(query.get("per_page", 30)), 100)
        if asked is not None:
            asked.append(query)
        if clamp and chosen:
            page = min(page, -(-len(chosen) // size))
        return [orjson.dumps(chosen[(page - 1) * size:page * size])]

    return app


def test_an_answer_that_is_the_records_themselves(tmp_path: Path, lgsp_env: Any) -> None:
    """A JSON array is the page's records (`items`, as a SOAP array is); a scalar is refused, saying what came."""
    from lgsp import runner
    from lgsp.discover import write_draft
    from loopback import serving

    with serving(_array_peer(250)) as base:
        target = _catalog_with_system(tmp_path / "catalog", f"  plain:\n    title: A plain REST list\n"
                                                             f"    protocol: rest\n    endpoint: {base}\n")
        draft = discover(load_catalog(target), "plain", "/things")
        assert (draft.source["records_field"], draft.source["cursor_param"], draft.key) == ("items", "since", ["id"])
        assert draft.source["paginator"] == {"type": "page_number", "page_param": "page", "size_param": "per_page",
                                             "page_size": 100, "first_page": 1}  # its cap, found by asking
        assert "the source answers at most 100 records a page" in draft.notes[0]
        write_draft(draft, target)
        outcome = runner.run_pipeline(draft.pipeline, catalog=load_catalog(target), settings=lgsp_env)
        assert outcome["rows_pulled"] == 250, "pages of 100 (its cap): only the last is short"
        with pytest.raises(DiscoverError, match="expected a JSON object or array, got int"):
            discover(load_catalog(target), "plain", "/count")


@pytest.mark.parametrize("clamp", [False, True])
def test_a_source_capping_its_pages_below_the_size_asked_is_read_to_the_end(clamp: bool, tmp_path: Path,
                                                                            lgsp_env: Any) -> None:
    """A pipeline written by hand asks 500 a page of a peer that answers 100 at most and says no total. Its first
    page is short, but may be the peer's cap: the next is asked for, and all 250 are synced (a short first page used to
    end the sync after 100). The rerun's whole answer is one short page: one more request ends it, empty, or, from a
    peer that answers its last page for any page past it, the same records again (not loaded twice)."""
    from lgsp import runner
    from lgsp.discover import write_draft
    from loopback import serving

    asked: list[dict[str, str]] = []
    with serving(_array_peer(250, clamp=clamp, asked=asked)) as base:
        target = _catalog_with_system(tmp_path / "catalog", f"  plain:\n    title: A plain REST list\n"
                                                             f"    protocol: rest\n    endpoint: {base}\n")
        draft = discover(load_catalog(target), "plain", "/things")
        draft.source["paginator"]["page_size"] = 500  # as a hand-written pipeline would
        write_draft(draft, target)
        catalog = load_catalog(target)
        asked.clear()
        first = runner.run_pipeline(draft.pipeline, catalog=catalog, settings=lgsp_env)
        assert first["rows_pulled"] == 250
        assert [q["page"] for q in asked] == ["1", "2", "3"], "the third page (50 < 100) was the last"
        asked.clear()
        again = runner.run_pipeline(draft.pipeline, catalog=catalog, settings=lgsp_env)
        assert again["mode"] == "incremental" and again["rows_pulled"] == 61  # the lookback hour: 60 minutes and one
        assert again["rows_changed"] == 0 and [q["page"] for q in asked] == ["1", "2"]
