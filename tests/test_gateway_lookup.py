"""Live lookups through the gateway, on SQLite and on a real PostgreSQL: a citizen asked of the real
population service (zeep, its real WSDL, spyne on loopback) now, and an enterprise of the real
business registry (REST, HTTP Basic).

The warehouse is loaded by the real population pipeline; the gateway (uvicorn in a thread, real
HTTP on loopback) is started afresh for each test, so its answer cache and connections start
empty. The source's failures are the sandbox's injected faults, or a relay of the real service
that alters its answers.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

import pgserver
from catalog import load_catalog
from catalog.loader import CatalogError
from catalog.models import Catalog
from gateway.api import create_app
from gateway.lookup import _key_problem
from gateway.service import _write_engine
from gateway.settings import load_gateway_settings
from lgsp.cli import app as lgsp_app
from loopback import serve, soap_relay
from test_gateway import _pseudonym, gateway_env, loaded_registry, running

ROOT = Path(__file__).resolve().parents[1]
PATH = "/api/v1/datasets/citizen/lookup"


@dataclasses.dataclass
class Warehouse:
    """The loaded warehouse of one database, the agencies' keys, and the sandbox's truth."""

    url: str
    keys: dict[str, str]
    sandbox: Any
    landed: set[str]  # personal IDs in core_citizen

    def scalar(self, sql: str, **params: Any) -> Any:
        engine = _write_engine(self.url)
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text(sql), params).scalar()
        finally:
            engine.dispose()

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        engine = _write_engine(self.url)
        try:
            with engine.connect() as conn:
                return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]
        finally:
            engine.dispose()

    def calls(self) -> int:
        """Exchanges with the population service's GetCitizen in the message log."""
        return int(self.scalar("SELECT count(*) FROM lgsp_message_log WHERE system = 'population' "
                               "AND operation = 'GetCitizen'"))

    def truth(self, personal_id: str) -> dict[str, Any]:
        return next(c for c in self.sandbox.data.citizens if c["personal_id"] == personal_id)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def loaded(request: pytest.FixtureRequest, sandbox_handle: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    home = tmp_path_factory.mktemp(f"lookup-{request.param}")
    admin = request.getfixturevalue("pg_admin_url") if request.param == "postgresql" else ""
    url = pgserver.create_database(admin) if admin else f"sqlite:///{home / 'warehouse.db'}"
    with gateway_env(sandbox_handle, home, url):
        catalog = load_catalog()
        registry = loaded_registry(url, catalog, ("population_citizens", "business_enterprises"))
        keys = {}
        for agency, dataset, grant in (("tu_phap", "citizen", ["personal_id"]), ("so_y_te", "citizen", []),
                                       ("cong_an", "citizen", ["personal_id", "full_name"]),
                                       ("so_gd_dt", "citizen", None), ("van_phong_dat_dai", "enterprise", [])):
            registry.add_agency(agency, agency, 100_000.0)
            keys[agency] = registry.issue_api_key(agency)
            if grant is not None:
                registry.grant(agency, dataset, grant)
        registry.engine.dispose()
        warehouse = Warehouse(url, keys, sandbox_handle, set())
        warehouse.landed = {r["personal_id"] for r in warehouse.rows("SELECT personal_id FROM core_citizen")}
        yield warehouse
    if admin:
        pgserver.drop_database(admin, url)


@dataclasses.dataclass
class Served:
    base: str
    wh: Warehouse

    def lookup(self, agency: str | None = "tu_phap", dataset: str = "citizen", **params: Any) -> requests.Response:
        headers = {"X-API-Key": self.wh.keys[agency]} if agency else {}
        return requests.get(f"{self.base}/api/v1/datasets/{dataset}/lookup", params=params, headers=headers,
                            timeout=60)

    def last_audit(self) -> dict[str, Any]:
        return self.wh.rows("SELECT * FROM gateway_audit ORDER BY recorded_at DESC, seq DESC LIMIT 1")[0]


def _gateway(wh: Warehouse, catalog: Catalog | None = None) -> Iterator[Served]:
    from connectors.limits import reset_limits

    wh.sandbox.faults.clear()
    reset_limits()
    engine = _write_engine(wh.url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM lgsp_circuit"))
    engine.dispose()
    settings = dataclasses.replace(load_gateway_settings(wh.url), principal_cache_s=0.0)
    try:
        with running(create_app(settings, catalog or load_catalog())) as base:
            yield Served(base, wh)
    finally:
        wh.sandbox.faults.clear()
        reset_limits()


@pytest.fixture
def served(loaded: Warehouse) -> Iterator[Served]:
    yield from _gateway(loaded)


def _with_lookup(catalog: Catalog, **changes: Any) -> Catalog:
    """The catalog with the citizen lookup's settings changed (and `limits` of the population system)."""
    limits = changes.pop("limits", None)
    shared = catalog.sharing["citizen"]
    assert shared.lookup is not None
    sharing = {**catalog.sharing, "citizen": shared.model_copy(
        update={"lookup": shared.lookup.model_copy(update=changes)})}
    systems = dict(catalog.systems)
    if limits:
        population = systems["population"]
        systems["population"] = population.model_copy(
            update={"limits": population.limits.model_copy(update=limits)})
    return catalog.model_copy(update={"sharing": sharing, "systems": systems})


def _landed_citizen(wh: Warehouse, skip: int = 0) -> dict[str, Any]:
    return sorted((c for c in wh.sandbox.data.citizens if c["personal_id"] in wh.landed),
                  key=lambda c: c["personal_id"])[skip]


# --- a live answer ----------------------------------------------------------------------------------------

def test_a_lookup_answers_the_source_record_now_protected_as_granted_audited_and_logged(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    citizen = _landed_citizen(served.wh)
    pid = citizen["personal_id"]
    calls = served.wh.calls()

    justice = served.lookup("tu_phap", personal_id=pid)  # granted personal_id, not the name
    assert justice.status_code == 200, justice.text
    body = justice.json()
    assert (body["source"], body["cached"], body["live_error"]) == ("live", False, None)
    assert justice.headers["X-Lgsp-Source"] == "live" and justice.headers["Cache-Control"] == "no-store"
    record = body["record"]
    assert record["personal_id"] == pid
    assert record["full_name"] == "*" * (len(citizen["full_name"]) - 3) + citizen["full_name"][-3:]  # masked
    assert record["address"] is None  # withheld
    assert (record["birth_date"], record["sex"], record["commune_code"]) == (
        citizen["birth_date"].isoformat(), citizen["sex"], citizen["commune_code"])
    assert served.wh.calls() == calls + 1  # one exchange with the source, in the message log

    police = served.lookup("cong_an", personal_id=pid).json()  # the same answer (cached), protected for its reader
    assert police["cached"] is True and served.wh.calls() == calls + 1
    assert (police["record"]["personal_id"], police["record"]["full_name"], police["record"]["address"]) == (
        pid, citizen["full_name"], None)

    audit = served.last_audit()
    assert (audit["agency_id"], audit["dataset"], audit["action"], audit["status"], audit["rows_returned"]) == (
        "cong_an", "citizen", "lookup_live", 200, 1)
    assert pid not in json.dumps(audit["query"], default=str) and _pseudonym(pid) in json.dumps(audit["query"])
    context = served.wh.scalar("SELECT context FROM lgsp_message_log WHERE operation = 'GetCitizen' "
                               "ORDER BY started_at DESC LIMIT 1")
    assert context == "gateway lookup of citizen for tu_phap"
    assert pid not in caplog.text and citizen["full_name"] not in caplog.text  # no personal data in the logs

    # as with a filter on a personal column: an agency that may not see the ID may not find a person by it
    health = served.lookup("so_y_te", personal_id=pid)
    assert health.status_code == 403, health.text
    assert health.json()["error"]["message"] == ("a lookup by personal_id needs a grant that includes it (ask the "
                                                 "data owner: Provincial Police (Công an tỉnh) - national population "
                                                 "database)")
    assert (served.last_audit()["agency_id"], served.last_audit()["status"]) == ("so_y_te", 403)
    assert served.wh.calls() == calls + 1


def test_a_lookup_within_cache_s_is_answered_without_calling_the_source_again(served: Served) -> None:
    pid = _landed_citizen(served.wh, 1)["personal_id"]
    calls = served.wh.calls()
    first = served.lookup(personal_id=pid).json()
    second = served.lookup(personal_id=pid).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["record"] == first["record"] and second["as_of"] == first["as_of"]
    assert served.wh.calls() == calls + 1


def test_a_citizen_the_source_does_not_know_is_404_and_the_refusals_are_audited(served: Served) -> None:
    unknown = "037099999999"
    assert unknown not in {c["personal_id"] for c in served.wh.sandbox.data.citizens}
    missing = served.lookup(personal_id=unknown)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"].startswith(f"population has no citizen with personal_id {unknown}")
    audit = served.last_audit()
    assert (audit["action"], audit["status"], audit["rows_returned"]) == ("lookup", 404, None)

    pid = _landed_citizen(served.wh)["personal_id"]
    anonymous = served.lookup(None, personal_id=pid)
    assert anonymous.status_code == 401 and "restricted" in anonymous.json()["error"]["message"]
    refused = served.lookup("so_gd_dt", personal_id=pid)
    assert refused.status_code == 403 and "no grant on 'citizen'" in refused.json()["error"]["message"]
    assert served.last_audit()["status"] == 403
    for params, problem in (({}, "personal_id: give exactly one value"),
                            ({"personal_id": pid, "commune_code": "14329"}, "commune_code: a lookup takes the key"),
                            ({"personal_id": "x" * 201}, "longer than 200 characters"),
                            ({"personal_id": "12"}, "personal_id '12' is not 12 digits (the dataset's rules"),
                            ({"personal_id": "\x83"}, "is not 12 digits"),
                            ({"personal_id": "999123456789"}, "999 is not a province code")):
        bad = served.lookup(**params)
        assert bad.status_code == 400 and problem in bad.json()["error"]["message"], bad.text
    calls = served.wh.calls()
    served.lookup(personal_id="\x00")
    assert served.wh.calls() == calls  # nothing refused here reached the source


# --- the source fails: the warehouse's copy answers, marked as such ------------------------------------------

def test_a_source_that_fails_is_answered_from_the_warehouse_copy_and_without_one_it_is_503(served: Served) -> None:
    citizen = _landed_citizen(served.wh, 2)
    served.wh.sandbox.faults["population"].error_rate = 1.0
    answer = served.lookup(personal_id=citizen["personal_id"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["source"], answer.headers["X-Lgsp-Source"]) == ("warehouse", "warehouse")
    assert body["live_error"] == "population GetCitizen: still failing after 2 attempts; last error: HTTP 503"
    loaded_at = served.wh.scalar("SELECT max(finished_at) FROM lgsp_batch WHERE dataset = 'citizen' "
                                 "AND status = 'loaded'")
    assert body["as_of"] is not None and body["as_of"][:19] == str(loaded_at).replace(" ", "T")[:19]
    assert body["record"]["commune_code"] == citizen["commune_code"]
    assert body["record"]["personal_id"] == citizen["personal_id"]  # protected the same way: the ID granted,
    assert body["record"]["full_name"].startswith("***") and body["record"]["address"] is None  # the rest not
    assert served.last_audit()["action"] == "lookup_warehouse"

    nowhere = served.lookup(personal_id="037099999998")
    assert nowhere.status_code == 503 and int(nowhere.headers["Retry-After"]) >= 1
    assert nowhere.json()["error"]["message"] == (
        "population GetCitizen: still failing after 2 attempts; last error: HTTP 503; "
        "and lgsp has no copy of this record; try again later")


def test_a_slow_source_is_given_up_after_the_lookups_timeout(loaded: Warehouse) -> None:
    citizen = _landed_citizen(loaded, 3)
    for served in _gateway(loaded, _with_lookup(load_catalog(), timeout_s=0.5, attempts=1)):
        plan = loaded.sandbox.faults["population"]
        plan.timeout_rate, plan.hang_s = 1.0, 5.0
        started = time.monotonic()
        answer = served.lookup(personal_id=citizen["personal_id"])
        waited = time.monotonic() - started
        assert answer.status_code == 200 and answer.json()["source"] == "warehouse", answer.text
        assert answer.json()["live_error"].endswith("timed out after 0.5s")
        assert waited < 4.0, waited  # not the 5 s the source hangs, nor the system's 15 s sync timeout


def test_a_lookup_waits_for_a_free_connection_at_most_its_timeout(loaded: Warehouse) -> None:
    """Every connection to the population service is taken (by this process's pipelines, say): the lookup
    does not queue behind them, it answers from the copy after `timeout_s`."""
    from connectors.limits import limits_for

    citizen = _landed_citizen(loaded, 8)
    catalog = _with_lookup(load_catalog(), timeout_s=0.5)
    for served in _gateway(loaded, catalog):
        slots = limits_for(catalog.systems["population"]).slots
        held = [slots.acquire(timeout=5) for _ in range(catalog.systems["population"].limits.max_concurrency)]
        calls = loaded.calls()
        try:
            started = time.monotonic()
            answer = served.lookup(personal_id=citizen["personal_id"])
            waited = time.monotonic() - started
        finally:
            for _ in held:
                slots.release()
        assert answer.status_code == 200 and answer.json()["source"] == "warehouse", answer.text
        assert answer.json()["live_error"] == ("population GetCitizen: all 2 connections to population stayed busy "
                                               "for 0.5s")
        assert 0.5 <= waited < 3.0 and loaded.calls() == calls
        assert served.lookup(personal_id=citizen["personal_id"]).json()["source"] == "live"  # free again


def test_a_lookup_keeps_the_full_rate_in_the_systems_peak_hours(loaded: Warehouse) -> None:
    """A clerk is waiting: the population system's peak hours (all day, every day here, background calls at
    0.2 a second: one every 5 s) do not hold a lookup back; six lookups of six citizens are all asked of the
    source, and none waited for the peak rate (`lgsp drift`'s calls do: tests/test_peak_hours.py)."""
    from catalog.models import PeakSpec
    from connectors.limits import limits_for

    peak = PeakSpec(hours="00:00-24:00", days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"], rate_per_s=0.2)
    catalog = _with_lookup(load_catalog(), limits={"peak": peak})
    for served in _gateway(loaded, catalog):
        calls = loaded.calls()
        answers = [served.lookup(personal_id=_landed_citizen(loaded, 10 + i)["personal_id"]) for i in range(6)]
        assert [(a.status_code, a.json()["source"]) for a in answers] == [(200, "live")] * 6
        assert loaded.calls() == calls + 6
        limits = limits_for(catalog.systems["population"])
        assert limits.peak is not None and limits.peak.until() is not None  # in a peak now
        assert limits.peak.calls == 0


def test_the_circuit_opens_and_then_lookups_do_not_call_the_source(loaded: Warehouse) -> None:
    first, second = _landed_citizen(loaded, 4), _landed_citizen(loaded, 5)
    catalog = _with_lookup(load_catalog(), limits={"breaker_failures": 2, "breaker_reset_s": 300.0})
    for served in _gateway(loaded, catalog):
        loaded.sandbox.faults["population"].error_rate = 1.0
        assert served.lookup(personal_id=first["personal_id"]).json()["source"] == "warehouse"
        state = loaded.rows("SELECT state, failures FROM lgsp_circuit WHERE system = 'population'")
        assert state == [{"state": "open", "failures": 2}]  # remembered for the pipelines too
        calls = loaded.calls()
        answer = served.lookup(personal_id=second["personal_id"])
        assert answer.status_code == 200 and answer.json()["source"] == "warehouse"
        assert "circuit open since" in answer.json()["live_error"]
        assert loaded.calls() == calls  # the source was not called
        nowhere = served.lookup(personal_id="037099999997")
        assert nowhere.status_code == 503 and nowhere.headers["Retry-After"] == "300"


# --- an answer lgsp cannot serve: quarantined, never served -----------------------------------------------

@pytest.mark.parametrize("change, rule", [
    (lambda c, other: re.sub(rb"<tns:birth_date>[^<]*<", b"<tns:birth_date>2020-13-45<", c), "type"),
    (lambda c, other: re.sub(rb"<tns:personal_id>[^<]*<", b"<tns:personal_id>" + other + b"<", c), "key"),
], ids=["unreadable_birth_date", "another_citizen"])
def test_an_answer_that_fails_the_checks_is_quarantined_and_the_copy_answers(
        loaded: Warehouse, monkeypatch: pytest.MonkeyPatch, change: Any, rule: str) -> None:
    landed = [_landed_citizen(loaded, i) for i in range(6, len(loaded.landed))]
    # two people whose CCCDs agree on sex and birth year, so that only the key check tells them apart
    citizen, other = next((a, b) for a in landed for b in landed if a is not b and a["sex"] == b["sex"]
                          and a["birth_date"].year == b["birth_date"].year)
    relay = serve(soap_relay(loaded.sandbox.population_wsdl,
                             lambda content: change(content, other["personal_id"].encode())))
    try:
        monkeypatch.setenv("LGSP_POPULATION_WSDL", next(relay) + "/?wsdl")
        for served in _gateway(loaded):
            answer = served.lookup(personal_id=citizen["personal_id"])
            assert answer.status_code == 200 and answer.json()["source"] == "warehouse", answer.text
            live_error = answer.json()["live_error"]
            assert "the answer failed lgsp's checks" in live_error and "quarantined as" in live_error
            assert answer.json()["record"]["birth_date"] == citizen["birth_date"].isoformat()  # the copy's
            kept = loaded.rows("SELECT quarantine_id, rule, payload, pipeline, status FROM lgsp_quarantine "
                               "WHERE pipeline = 'lookup:population.GetCitizen' ORDER BY quarantined_at DESC")
            assert kept and kept[0]["rule"].startswith(rule) and kept[0]["status"] == "open"
            assert kept[0]["payload"].find("2020-13-45" if rule == "type" else other["personal_id"]) >= 0
            assert kept[0]["quarantine_id"][:12] in live_error
            closed = CliRunner().invoke(lgsp_app, ["quarantine", "close", kept[0]["quarantine_id"][:12]])
            assert closed.exit_code == 0 and "from lookup:population.GetCitizen" in " ".join(closed.stdout.split())
            assert loaded.scalar("SELECT status FROM lgsp_quarantine WHERE quarantine_id = :q",
                                 q=kept[0]["quarantine_id"]) == "closed"  # dealt with, and kept
            again = CliRunner().invoke(lgsp_app, ["quarantine", "close", kept[0]["quarantine_id"][:12]])
            assert again.exit_code == 1 and "no single open quarantined row" in " ".join(again.stdout.split())
            assert served.lookup(personal_id=citizen["personal_id"]).json()["cached"] is False  # never cached
            without_copy = served.lookup(personal_id=next(  # quarantined by the sync, for a rule other than its key's
                c["personal_id"] for c in loaded.sandbox.data.citizens if c["personal_id"] not in loaded.landed
                and _key_problem(load_catalog().datasets["citizen"], {"personal_id": c["personal_id"]}) is None))
            if rule == "type":
                assert without_copy.status_code == 502, without_copy.text
                assert "the data team can see the answer in the quarantine" in without_copy.json()["error"]["message"]
    finally:
        relay.close()


# --- a REST source: the key in the query string, the record in a list ---------------------------------------

def test_an_enterprise_is_looked_up_at_the_business_registry_over_rest(served: Served) -> None:
    current = {r["tax_code"]: r for r in served.wh.rows("SELECT tax_code, name, status FROM shared_enterprise")}
    truth = next(e for e in sorted(served.wh.sandbox.data.enterprises, key=lambda e: e["tax_code"])
                 if e["tax_code"] in current)
    calls = int(served.wh.scalar("SELECT count(*) FROM lgsp_message_log WHERE system = 'business'"))
    answer = served.lookup("van_phong_dat_dai", "enterprise", tax_code=truth["tax_code"])
    assert answer.status_code == 200 and answer.json()["source"] == "live", answer.text
    record = answer.json()["record"]
    assert (record["tax_code"], record["name"], record["status"]) == (truth["tax_code"], truth["name"], truth["status"])
    representative = truth["legal_representative"]
    assert record["legal_representative"] == "*" * (len(representative) - 3) + representative[-3:]  # masked
    assert int(served.wh.scalar("SELECT count(*) FROM lgsp_message_log WHERE system = 'business'")) == calls + 1

    known = {e["tax_code"] for e in served.wh.sandbox.data.enterprises}
    unknown = next(code for code in (f"27{n:08d}" for n in range(10**6)) if code not in known)
    missing = served.lookup("van_phong_dat_dai", "enterprise", tax_code=unknown)
    assert missing.status_code == 404, missing.text
    assert missing.json()["error"]["message"] == (f"business has no enterprise with tax_code {unknown} "
                                                  "(/api/enterprises answered without it)")
    bad = served.lookup("van_phong_dat_dai", "enterprise", tax_code="27-000")
    assert bad.status_code == 400 and "is not a tax code" in bad.json()["error"]["message"]

    served.wh.sandbox.faults["business"].error_rate = 1.0
    other = next(e for e in sorted(served.wh.sandbox.data.enterprises, key=lambda e: e["tax_code"], reverse=True)
                 if e["tax_code"] in current)
    copy = served.lookup("van_phong_dat_dai", "enterprise", tax_code=other["tax_code"]).json()
    assert (copy["source"], copy["record"]["name"]) == ("warehouse", current[other["tax_code"]]["name"])
    assert copy["live_error"] == "business /api/enterprises: still failing after 2 attempts; last error: HTTP 503"


def test_a_source_lgsp_has_no_credential_for_is_answered_from_the_copy_and_the_log_says_which(
        loaded: Warehouse, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("LGSP_BUSINESS_PASSWORD")
    tax_code = loaded.rows("SELECT tax_code FROM shared_enterprise ORDER BY tax_code LIMIT 1")[0]["tax_code"]
    for served in _gateway(loaded):
        answer = served.lookup("van_phong_dat_dai", "enterprise", tax_code=tax_code)
        assert answer.status_code == 200 and answer.json()["source"] == "warehouse", answer.text
        assert answer.json()["live_error"] == ("business /api/enterprises: lgsp has no credential for this system "
                                               "(the gateway's log says which)")
    assert "secret env:LGSP_BUSINESS_PASSWORD: set the environment variable LGSP_BUSINESS_PASSWORD" in caplog.text


# --- declared in the catalog, documented in OpenAPI ----------------------------------------------------------

def test_the_lookup_is_in_the_catalog_and_openapi(served: Served) -> None:
    spec = requests.get(served.base + "/openapi.json", timeout=30).json()
    operation = spec["paths"][PATH]["get"]
    assert [p["name"] for p in operation["parameters"]] == ["personal_id"]
    assert {"200", "401", "403", "404", "502", "503"} <= set(operation["responses"])
    info = requests.get(served.base + "/api/v1/datasets/citizen", timeout=30).json()
    assert info["lookup"] == {"system": "population", "key": ["personal_id"], "path": PATH}
    assert requests.get(served.base + "/api/v1/datasets/dossier", timeout=30).json()["lookup"] is None


def test_the_catalog_shows_the_last_drift_check(loaded: Warehouse) -> None:
    from lgsp.drift import check_drift

    check_drift(load_catalog(), loaded.url, "citizen", sample=12)
    for served in _gateway(loaded):
        info = requests.get(served.base + "/api/v1/datasets/citizen", timeout=30).json()
        drift = info["last_drift_check"]
        assert (drift["sampled"], drift["same"], drift["silent"]) == (12, 12, 0), drift
        assert requests.get(served.base + "/api/v1/datasets/dossier", timeout=30).json()["last_drift_check"] is None


@pytest.mark.parametrize("lookup, problem", [
    ({"system": "nowhere", "operation": "GetCitizen"}, "sharing.citizen.lookup.system: unknown system 'nowhere'"),
    ({"system": "population", "operation": "GetCitizen", "key_params": {"full_name": "name"}},
     "sharing.citizen.lookup.key_params: ['full_name'] are not key columns of 'citizen'"),
    ({"system": "population", "operation": "GetCitizen", "fields": {"HoTen": "ten"}},
     "sharing.citizen.lookup.fields: ['ten'] are not columns of dataset 'citizen'"),
])
def test_a_wrong_lookup_in_the_catalog_names_the_file_and_field(tmp_path: Path, lookup: dict[str, Any],
                                                                 problem: str) -> None:
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    for source in (ROOT / "catalog").glob("*.yaml"):
        (catalog_dir / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    sharing = yaml.safe_load((catalog_dir / "sharing.yaml").read_text(encoding="utf-8"))
    sharing["sharing"]["citizen"]["lookup"] = lookup
    (catalog_dir / "sharing.yaml").write_text(yaml.safe_dump(sharing, allow_unicode=True), encoding="utf-8")
    with pytest.raises(CatalogError) as caught:
        load_catalog(catalog_dir)
    assert "sharing.yaml" in str(caught.value) and problem in str(caught.value)


@pytest.mark.parametrize("answer, record_field, fields, found", [
    ({"personal_id": "1", "full_name": "A"}, "", {}, {"personal_id": "1", "full_name": "A"}),
    ({"items": None}, "", {}, None),  # an operation that answered nothing
    ({}, "", {}, None),
    ({"results": []}, "results", {}, None),
    ({"results": [{"personal_id": "2"}, {"personal_id": "1", "x": 1}]}, "results", {}, {"personal_id": "1", "x": 1}),
    ({"data": {"rows": {"Row": [{"SoDinhDanh": "1"}]}}}, "data.rows", {"SoDinhDanh": "personal_id"},
     {"SoDinhDanh": "1"}),  # a SOAP array wrapper, the key under its source name
    ({"results": [{"personal_id": "1"}, {"personal_id": "1"}]}, "results", {}, "2 records with the asked key"),
    ({"results": "1"}, "results", {}, "is a str, expected an object"),
])
def test_the_record_is_found_in_the_answer(answer: dict[str, Any], record_field: str, fields: dict[str, str],
                                           found: Any) -> None:
    from catalog.models import LookupSpec
    from gateway.lookup import _record_in, _Unusable

    spec = LookupSpec(system="population", operation="Op", record_field=record_field, fields=fields)
    if isinstance(found, str):
        with pytest.raises(_Unusable, match=found):
            _record_in(answer, spec, {"personal_id": "1"})
    else:
        assert _record_in(answer, spec, {"personal_id": "1"}) == found
