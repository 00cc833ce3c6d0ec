"""Tests for the sandbox simulators: real loopback HTTP, real zeep, real requests."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests
import zeep
import zeep.exceptions
from zeep.helpers import serialize_object

from sandbox import (DATASET_KEYS, SYSTEMS, FaultPlan, SandboxCredentials, SandboxData, serve_wsgi, start_sandbox,
                     with_faults)
from sandbox.citizens import CITIZEN_DEFECT_KINDS, CITIZEN_FIELDS, century_sex_digit
from sandbox.civil_servants import CIVIL_SERVANT_DEFECT_KINDS, make_civil_servants_with_defects
from sandbox.common import VN_TZ, WINDOW_END_UTC, WINDOW_END_VN, WINDOW_START_UTC, parse_instant
from sandbox.communes import UNKNOWN_COMMUNE, commune_codes, ninh_binh_communes
from sandbox.data import make_citizens, make_dossiers, record_key
from sandbox.dossiers import DOSSIER_DEFECT_KINDS, DOSSIER_FIELDS
from sandbox.enterprises import ENTERPRISE_DEFECT_KINDS, make_enterprises_with_defects
from sandbox.faults import FAULT_KINDS
from sandbox.land import (LAND_PARCEL_DEFECT_KINDS, LAND_PARCEL_FIELDS, LAND_USES, certified,
                          make_land_parcels_with_defects)
from sandbox.land_rest import row_to_json
from sandbox.procedures import PROCEDURES

API_KEY = "test-key"
ROOT = Path(__file__).resolve().parents[1]
DOSSIER_ID_RE = re.compile(r"H37\.\d{2}-\d{6}-\d{4}")
PHONE_RE = re.compile(r"0[35789]\d{8}")
DATETIME_KEYS = ("received_at", "due_at", "finished_at", "returned_at", "updated_at")


@pytest.fixture(scope="module")
def sb():
    with start_sandbox(seed=37, citizens=400, dossiers=500, api_key=API_KEY) as handle:
        yield handle


@pytest.fixture(scope="module")
def soap(sb):
    return zeep.Client(sb.population_wsdl)


@pytest.fixture()
def faults(sb):
    """The fault board of every system, counters zeroed, restored to 'no faults' afterwards."""
    sb.faults.reset()
    yield sb.faults
    sb.faults.clear()
    sb.faults.hang_s, sb.faults.retry_after_s = 2.0, 1


def rest(sb, path="/api/v1/dossiers", key=API_KEY, **params):
    headers = {"X-API-Key": key} if key is not None else {}
    return requests.get(sb.tthc_url + path, params=params, headers=headers, timeout=10)


def all_rest_pages(sb, page_size, **params):
    items, page = [], 1
    while True:
        body = rest(sb, page=page, page_size=page_size, **params).json()
        items += body["items"]
        if page >= body["total_pages"]:
            return items, body["total"]
        page += 1


def parse_dossier(item):
    return {k: (datetime.fromisoformat(v) if k in DATETIME_KEYS and v else v) for k, v in item.items()}


# --- data generation -------------------------------------------------------------------------


def test_generation_is_deterministic():
    assert make_citizens(5, 200) == make_citizens(5, 200)
    assert make_dossiers(5, 200) == make_dossiers(5, 200)
    assert make_citizens(5, 200) != make_citizens(6, 200)
    assert make_dossiers(5, 200) != make_dossiers(6, 200)
    a, b = SandboxData.generate(9, 100, 100), SandboxData.generate(9, 100, 100)
    assert (a.citizens, a.dossiers, a.citizen_defects, a.dossier_defects) == (
        b.citizens, b.dossiers, b.citizen_defects, b.dossier_defects)


def test_served_data_equals_regenerated_ground_truth(sb):
    again = SandboxData.generate(37, 400, 500)
    assert again.citizens == sb.data.citizens and again.dossiers == sb.data.dossiers


def test_129_ninh_binh_communes():
    communes = ninh_binh_communes()
    assert len(communes) == 129 and len({c for c, _ in communes}) == 129
    assert all(re.fullmatch(r"\d{5}", c) for c, _ in communes)
    assert ("14464", "Xã Gia Viễn") in communes
    assert UNKNOWN_COMMUNE not in commune_codes()


def test_citizen_rules(sb):
    rows, defects = sb.data.citizens, sb.data.citizen_defects
    assert len({r["personal_id"] for r in rows}) == len(rows) == 400
    assert sorted(defects.values()) == sorted(CITIZEN_DEFECT_KINDS)  # 4 defects, one per kind
    for r in rows:
        assert tuple(r) == CITIZEN_FIELDS
        kind = defects.get(r["personal_id"])
        pid, born = r["personal_id"], r["birth_date"]
        assert date(1940, 1, 1) <= born <= date(2024, 12, 31) and r["sex"] in ("male", "female")
        assert r["full_name"] == unicodedata.normalize("NFC", r["full_name"]) and len(r["full_name"].split()) >= 3
        assert WINDOW_START_UTC <= r["updated_at"] <= WINDOW_END_UTC and r["updated_at"].utcoffset() is not None
        assert r["address"]
        assert (kind == "cccd_length") == (len(pid) == 11)
        assert (kind == "commune_unknown") == (r["commune_code"] == UNKNOWN_COMMUNE)
        assert (kind == "phone_format") == (not PHONE_RE.fullmatch(r["phone"]))
        assert (kind == "cccd_century_sex") == (pid[3] != century_sex_digit(r["sex"], born.year))
        if kind is None:
            assert re.fullmatch(r"\d{12}", pid) and pid[:3] in ("037", "036", "035", "001")
            assert pid[4:6] == f"{born.year % 100:02d}" and r["commune_code"] in commune_codes()
    assert len({r["updated_at"] for r in rows}) < len(rows), "some equal timestamps expected"


def test_citizen_distribution():
    rows = make_citizens(37, 3000, defect_rate=0.0)
    share = sum(r["personal_id"].startswith("037") for r in rows) / len(rows)
    assert 0.65 < share < 0.75
    assert len({r["commune_code"] for r in rows}) > 120


def test_dossier_rules(sb):
    rows, defects = sb.data.dossiers, sb.data.dossier_defects
    assert len({r["dossier_id"] for r in rows}) == len(rows) == 500
    assert sorted(set(defects.values())) == sorted(DOSSIER_DEFECT_KINDS)
    codes = {p.code: p.name for p in PROCEDURES}
    for r in rows:
        assert tuple(r) == DOSSIER_FIELDS and DOSSIER_ID_RE.fullmatch(r["dossier_id"])
        assert codes[r["procedure_code"]] == r["procedure_name"]
        assert r["dossier_id"][7:13] == r["received_at"].strftime("%y%m%d")
        kind = defects.get(r["dossier_id"])
        assert (kind == "due_before_received") == (r["due_at"] < r["received_at"])
        assert (kind == "channel_unknown") == (r["channel"] not in ("online", "paper"))
        assert (kind == "commune_unknown") == (r["commune_code"] not in commune_codes())
        finished, returned = r["finished_at"], r["returned_at"]
        assert (kind == "finished_before_received") == (finished is not None and finished < r["received_at"])
        assert (finished is not None) == (r["status"] in ("finished", "returned"))
        assert (returned is not None) == (r["status"] == "returned")
        if returned is not None:
            assert finished <= returned
        events = [t for t in (r["received_at"], finished, returned) if t is not None]
        assert max(events) <= r["updated_at"] <= WINDOW_END_VN
        assert r["paid_online"] is False or r["channel"] == "online"
        assert r["receiving_agency"].startswith(("UBND ", "Sở "))


def test_dossier_calibration():
    rows = make_dossiers(37, 6000, defect_rate=0.0)
    done = [r for r in rows if r["finished_at"] is not None]
    on_time = sum(r["finished_at"] <= r["due_at"] for r in done) / len(done)
    online = [r for r in rows if r["channel"] == "online"]
    assert 0.94 <= on_time <= 0.98
    assert 0.75 <= len(online) / len(rows) <= 0.81
    assert 0.55 <= sum(r["paid_online"] for r in online) / len(online) <= 0.63
    assert 0.86 <= sum(r["digitised"] for r in rows) / len(rows) <= 0.92
    assert 0.17 <= sum(r["receiving_agency"].startswith("Sở") for r in rows) / len(rows) <= 0.23
    assert {r["status"] for r in rows} == {"received", "processing", "finished", "returned"}


# --- SOAP (zeep) -----------------------------------------------------------------------------


def test_get_citizen_returns_the_right_person(sb, soap):
    for row in sb.data.citizens[::97]:
        got = serialize_object(soap.service.GetCitizen(row["personal_id"]))
        assert dict(got) == row
        assert got["updated_at"].utcoffset() == timedelta(0)


def test_get_citizen_faults(sb, soap):
    with pytest.raises(zeep.exceptions.Fault) as err:
        soap.service.GetCitizen("037000000000")
    assert err.value.code.endswith("Client.NotFound")
    with pytest.raises(zeep.exceptions.Fault) as err:
        soap.service.GetCitizen("12ab")
    assert err.value.code.endswith("Client.InvalidArgument")
    short_id = next(p for p, k in sb.data.citizen_defects.items() if k == "cccd_length")
    assert soap.service.GetCitizen(short_id).personal_id == short_id  # stored bad rows stay fetchable


def test_list_changed_citizens_pages_cover_every_row_once(sb, soap):
    since = datetime(2025, 1, 1, tzinfo=UTC)
    seen, page = [], 1
    while True:
        result = soap.service.ListChangedCitizens(since=since, page=page, page_size=70)
        assert (result.page, result.page_size, result.total, result.total_pages) == (page, 70, 400, 6)
        seen += [dict(serialize_object(c)) for c in result.items]
        if page == result.total_pages:
            break
        page += 1
    assert seen == sb.data.citizens  # every row exactly once, ordered by (updated_at, personal_id)
    beyond = soap.service.ListChangedCitizens(since=since, page=7, page_size=70)
    assert beyond.items == [] and beyond.total == 400
    capped = soap.service.ListChangedCitizens(since=since, page=1, page_size=5000)
    assert capped.page_size == 1000 and len(capped.items) == 400


def test_list_changed_citizens_since_is_inclusive(sb, soap):
    stamps = [r["updated_at"] for r in sb.data.citizens]
    tie = next(t for t in stamps[len(stamps) // 2:] if stamps.count(t) > 1)
    expected = [r["personal_id"] for r in sb.data.citizens if r["updated_at"] >= tie]
    for since in (tie, tie.astimezone(VN_TZ)):
        result = soap.service.ListChangedCitizens(since=since, page=1, page_size=1000)
        assert [c.personal_id for c in result.items] == expected and result.total == len(expected)
    later = soap.service.ListChangedCitizens(since=tie + timedelta(seconds=1), page=1, page_size=1000)
    assert later.total == len(expected) - stamps.count(tie)
    with pytest.raises(zeep.exceptions.Fault):
        soap.service.ListChangedCitizens(since=tie, page=0, page_size=10)


# --- REST ------------------------------------------------------------------------------------


def test_rest_pages_cover_every_dossier_once(sb):
    items, total = all_rest_pages(sb, page_size=120)
    assert total == 500 and len(items) == 500
    assert [parse_dossier(i) for i in items] == sb.data.dossiers
    first = items[0]
    assert first["received_at"].endswith("+07:00") and isinstance(first["digitised"], bool)
    assert rest(sb, page=99, page_size=120).json()["items"] == []
    body = rest(sb, page_size=5000).json()
    assert body["page_size"] == 1000 and len(body["items"]) == 500
    assert rest(sb).json()["page_size"] == 100


def test_rest_updated_since_is_inclusive_for_any_offset(sb):
    pivot = sb.data.dossiers[321]["updated_at"]
    expected = [d["dossier_id"] for d in sb.data.dossiers if d["updated_at"] >= pivot]
    forms = [pivot.isoformat(), pivot.astimezone(UTC).isoformat(),
             pivot.astimezone(UTC).isoformat().replace("+00:00", "Z")]
    for form in forms:
        items, total = all_rest_pages(sb, page_size=50, updated_since=form)
        assert [i["dossier_id"] for i in items] == expected and total == len(expected)
    raw = requests.get(f"{sb.tthc_url}/api/v1/dossiers?updated_since={pivot.isoformat()}",  # '+' unencoded
                       headers={"X-API-Key": API_KEY}, timeout=10)
    assert raw.json()["total"] == len(expected)
    after = rest(sb, updated_since=(pivot + timedelta(seconds=1)).isoformat(), page_size=1000).json()
    assert after["total"] == sum(d["updated_at"] > pivot for d in sb.data.dossiers)


@pytest.mark.parametrize(("params", "name"), [
    ({"page": "0"}, "page"), ({"page_size": "x"}, "page_size"),
    ({"updated_since": "yesterday"}, "updated_since"), ({"updated_since": "2025-08-01T00:00:00"}, "updated_since"),
])
def test_rest_bad_parameters(sb, params, name):
    response = rest(sb, **params)
    assert response.status_code == 400 and name in response.json()["error"]


def test_rest_auth_health_and_404(sb):
    assert rest(sb, key=None).status_code == 401
    assert rest(sb, key="wrong").status_code == 401
    assert "error" in rest(sb, key="wrong").json()
    health = rest(sb, "/health", key=None)
    assert health.status_code == 200 and health.json() == {"status": "ok", "system": "tthc"}
    missing = rest(sb, "/api/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()


def test_concurrent_requests(sb, soap):
    def fetch(page):
        return rest(sb, page=page, page_size=50).json()["items"], soap.service.ListChangedCitizens(
            since=None, page=page, page_size=50).items

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fetch, range(1, 9)))
    assert sum(len(r[0]) for r in results) == 400 and sum(len(r[1]) for r in results) == 400


def test_a_soap_request_never_forces_a_full_garbage_collection(sb, soap):
    """spyne ran gc.collect() after a request once a second: in a big process, seconds holding the GIL."""
    import gc

    import spyne.context

    full = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(info)

    spyne.context._LAST_GC_RUN = 0.0  # as if the last one was long ago: spyne would collect now
    gc.disable()  # no automatic collection meanwhile: only a forced one can count
    gc.callbacks.append(count)
    try:
        for _ in range(3):
            soap.service.ListChangedCitizens(since=None, page=1, page_size=5)
            requests.get(sb.population_wsdl, timeout=10).raise_for_status()
    finally:
        gc.callbacks.remove(count)
        gc.enable()
    assert full == []


# --- faults ----------------------------------------------------------------------------------


def test_fault_plan_error_rate_and_recovery(sb, soap, faults):
    known = sb.data.citizens[0]["personal_id"]
    faults.error_rate = 1.0
    response = rest(sb)
    assert response.status_code == 503 and "error" in response.json()
    with pytest.raises(zeep.exceptions.TransportError) as err:
        soap.service.GetCitizen(known)
    assert err.value.status_code == 503
    assert rest(sb, "/health").status_code == 200  # exempt
    assert requests.get(sb.population_wsdl, timeout=10).status_code == 200  # exempt
    assert zeep.Client(sb.population_wsdl).service  # a new client can still read the WSDL
    faults.error_rate = 0.0
    assert rest(sb).status_code == 200
    assert soap.service.GetCitizen(known).personal_id == known


def test_fault_plan_latency_and_determinism(sb, faults):
    faults.latency_s = 0.2
    started = time.perf_counter()
    assert rest(sb).status_code == 200
    assert time.perf_counter() - started >= 0.2
    a, b = FaultPlan(error_rate=0.3, seed=4), FaultPlan(error_rate=0.3, seed=4)
    draws = [a.decide()[0] for _ in range(200)]
    assert draws == [b.decide()[0] for _ in range(200)] and 30 < sum(draws) < 90
    assert a.requests == 200 and a.injected == sum(draws)


def test_parse_instant_tolerates_decoded_plus():
    assert parse_instant("2025-08-01T07:00:00 07:00") == datetime(2025, 8, 1, tzinfo=UTC)
    assert parse_instant("2025-08-01T00:00:00Z") == datetime(2025, 8, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_instant("2025-08-01T00:00:00")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_python_dash_m_sandbox_starts_and_stops(tmp_path, stop):
    """It stops on SIGINT and SIGTERM, also when started with SIGINT ignored (a background job's children are)."""
    env_file = tmp_path / "sandbox.env"
    with subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "sandbox", "--citizens", "20", "--dossiers", "20", "--seed",
         "3", "--size", "land_parcel=9", "--env-file", str(env_file)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `nohup cmd &` starts it
    ) as proc:
        try:
            wsdl_line, rest_line = proc.stdout.readline(), proc.stdout.readline()
            assert wsdl_line.startswith("population WSDL: http://127.0.0.1:") and wsdl_line.strip().endswith("/?wsdl")
            url = rest_line.split()[-1]
            assert requests.get(url, timeout=10).json()["total"] == 20
            assert zeep.Client(wsdl_line.split()[-1]).service.ListChangedCitizens(since=None).total == 20
            lines = [proc.stdout.readline() for _ in range(10)]
            urls = dict(line.split() for line in lines[:8])
            assert set(urls) == set(SYSTEMS[2:]) and urls["civil_servants"].startswith("https://")
            assert "9 land_parcel" in lines[9]
            exported = dict(line.removeprefix("export ").strip().split("=", 1)
                            for line in env_file.read_text().splitlines())
            assert set(exported) == ENV_NAMES and exported["LGSP_LAND_URL"] == urls["land"]
            assert env_file.stat().st_mode & 0o777 == 0o600
            printed = wsdl_line + rest_line + "".join(lines)
            assert not any(exported[name] in printed for name in exported if name.endswith(("PASSWORD", "SECRET")))
        finally:
            proc.send_signal(stop)
            try:  # 12 servers to stop on a machine the rest of the suite keeps busy: seconds, not minutes
                _, stderr = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack, then it dies
                _, stderr = proc.communicate(timeout=30)
                pytest.fail(f"python -m sandbox did not stop within 60 s of {stop.name}; its threads:\n{stderr[-6000:]}")
    assert proc.returncode == 0 and "Traceback" not in stderr


# --- every system: harness, data, env ---------------------------------------------------------

ENV_NAMES = {
    "LGSP_POPULATION_WSDL", "LGSP_TTHC_URL", "LGSP_TTHC_API_KEY", "LGSP_CIVIL_STATUS_WSDL",
    "LGSP_CIVIL_STATUS_USER", "LGSP_CIVIL_STATUS_PASSWORD", "LGSP_LAND_URL", "LGSP_LAND_CLIENT_ID",
    "LGSP_LAND_CLIENT_SECRET", "LGSP_BUSINESS_URL", "LGSP_BUSINESS_USER", "LGSP_BUSINESS_PASSWORD",
    "LGSP_CIVIL_SERVANTS_URL", "LGSP_CIVIL_SERVANTS_CERT", "LGSP_CIVIL_SERVANTS_KEY", "LGSP_CIVIL_SERVANTS_CA",
    "LGSP_DVCQG_URL", "LGSP_DVCQG_USER", "LGSP_DVCQG_PASSWORD", "LGSP_DOCUMENTS_URL", "LGSP_DOCUMENTS_TOKEN",
    "LGSP_REPORTING_WSDL", "LGSP_REPORTING_USER", "LGSP_REPORTING_PASSWORD", "LGSP_HEALTH_INSURANCE_URL",
    "LGSP_HEALTH_INSURANCE_API_KEY",
}
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")


def mtls(sb):
    return {"cert": (sb.tls.client_cert, sb.tls.client_key), "verify": sb.tls.ca_cert}


def get(sb, system, path, **kwargs):
    kwargs.setdefault("timeout", 10)
    if system == "civil_servants":
        kwargs.update(mtls(sb))
    return requests.get(sb.urls[system] + path, **kwargs)


def failing_keys(rows, key, rule, **params):
    """Keys of the rows the lead's vectorised rule rejects."""
    import pandas as pd

    from quality.rules import RULES

    frame = pd.DataFrame(rows)
    return set(frame.loc[~RULES[rule].check(frame, **params), key])


def test_every_system_is_up_on_its_own_port(sb):
    assert set(sb.urls) == set(SYSTEMS) and len({u.rsplit(":", 1)[1] for u in sb.urls.values()}) == 10
    for system, url in sb.urls.items():
        if system in ("population", "civil_status", "reporting"):
            assert url.endswith("/?wsdl") and b"definitions" in requests.get(url, timeout=10).content
        else:
            assert not url.endswith("/") and get(sb, system, "/health").json() == {"status": "ok", "system": system}
    assert sb.urls["civil_servants"].startswith("https://127.0.0.1:")
    assert sb.population_wsdl == sb.urls["population"] and sb.tthc_url == sb.urls["tthc"]


def test_env_points_at_every_system(sb):
    env = sb.env()
    assert set(env) == ENV_NAMES
    assert env["LGSP_TTHC_API_KEY"] == API_KEY and env["LGSP_LAND_URL"] == sb.urls["land"]
    assert env["LGSP_CIVIL_STATUS_WSDL"] == sb.urls["civil_status"] and env["LGSP_REPORTING_WSDL"].endswith("?wsdl")
    for name in ("LGSP_CIVIL_SERVANTS_CERT", "LGSP_CIVIL_SERVANTS_KEY", "LGSP_CIVIL_SERVANTS_CA"):
        assert Path(env[name]).is_file()
    assert "sbx-" not in repr(sb) and "sbx-" not in repr(sb.credentials)
    assert SandboxCredentials.for_seed(37, API_KEY).env().items() <= env.items()  # fixed per seed
    other = SandboxCredentials.for_seed(38).env()
    assert other["LGSP_LAND_CLIENT_SECRET"] != env["LGSP_LAND_CLIENT_SECRET"] and other["LGSP_TTHC_API_KEY"]


def test_data_has_every_dataset_with_its_key_and_defects(sb):
    assert set(DATASET_KEYS) == {"citizen", "dossier", "civil_status_event", "household_member", "land_parcel",
                                 "enterprise", "civil_servant", "document", "procedure", "health_insurance_card"}
    for dataset in DATASET_KEYS:
        rows = sb.data.records(dataset)
        assert rows and len({record_key(dataset, r) for r in rows}) == len(rows), dataset
        assert set(sb.data.defects(dataset)) <= {record_key(dataset, r) for r in rows}
    assert sb.data.records("citizen") is sb.data.citizens and sb.data.defects("dossier") is sb.data.dossier_defects
    small = SandboxData.generate(5, 10, 10, sizes={"land_parcel": 7, "enterprise": 3})
    assert (len(small.land_parcels), len(small.enterprises), len(small.civil_servants)) == (7, 3, 400)
    with pytest.raises(ValueError, match="parcels"):
        SandboxData.generate(5, 10, 10, sizes={"parcels": 1})
    with pytest.raises(KeyError):
        small.records("nothing")


def test_stop_removes_the_pki_and_frees_the_ports():
    handle = start_sandbox(seed=2, citizens=5, dossiers=5, sizes=dict.fromkeys(DATASET_KEYS, 0) | {"procedure": 30})
    folder, url = Path(handle.tls.directory), handle.urls["land"]
    assert len({plan.seed for _, plan in handle.faults.items()}) == 10  # one independent sequence per system
    assert folder.is_dir() and not handle.data.land_parcels
    handle.stop()
    handle.stop()
    assert not folder.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/health", timeout=2)


# --- new data generators -----------------------------------------------------------------------


@pytest.mark.parametrize("make", [make_land_parcels_with_defects, make_enterprises_with_defects,
                                  make_civil_servants_with_defects])
def test_new_generators_are_deterministic_and_sorted(make):
    rows, defects = make(11, 300, 0.05)
    assert (rows, defects) == make(11, 300, 0.05) and rows != make(12, 300, 0.05)[0]
    key = {make_land_parcels_with_defects: "parcel_id", make_enterprises_with_defects: "tax_code",
           make_civil_servants_with_defects: "servant_id"}[make]
    assert rows == sorted(rows, key=lambda r: (r["updated_at"], r[key])) and len({r[key] for r in rows}) == 300
    assert all(WINDOW_START_UTC <= r["updated_at"] <= WINDOW_END_UTC for r in rows)
    assert len({r["updated_at"] for r in rows}) < len(rows), "some equal timestamps expected"
    assert len(defects) == 15


def test_land_parcel_defects_are_exactly_the_rule_failures():
    rows, defects = make_land_parcels_with_defects(3, 600, 0.04)
    assert sorted(set(defects.values())) == sorted(LAND_PARCEL_DEFECT_KINDS) and len(defects) == 24
    assert tuple(rows[0]) == LAND_PARCEL_FIELDS
    by_kind = {k: {p for p, d in defects.items() if d == k} for k in LAND_PARCEL_DEFECT_KINDS}
    assert failing_keys(rows, "parcel_id", "range", column="area_m2", min=0, min_exclusive=True) == by_kind[
        "area_not_positive"]
    assert failing_keys(rows, "parcel_id", "enum", column="land_use", values=list(LAND_USES)) == by_kind[
        "land_use_unknown"]
    assert failing_keys(rows, "parcel_id", "commune_code", column="commune_code") == by_kind["commune_unknown"]
    assert failing_keys(rows, "parcel_id", "cccd", column="holder_personal_id", sex="holder_sex",
                        birth_date="holder_birth_date") == by_kind["holder_cccd_invalid"]
    for r in rows:
        assert r["parcel_id"] == f"{r['commune_code']}-{r['map_sheet']}-{r['parcel_no']}"
        assert 1 <= r["map_sheet"] <= 120 and 1 <= r["parcel_no"] <= 999 and round(r["area_m2"], 2) == r["area_m2"]
        assert len(r["holder_name"].split()) >= 3
        assert re.fullmatch(r"[A-Z]{2} \d{6}", r["certificate_no"]) if certified(r["parcel_id"]) else \
            r["certificate_no"] is None
    uncertified = sum(r["certificate_no"] is None for r in rows)
    assert 0.06 * len(rows) < uncertified < 0.18 * len(rows), uncertified  # about 12% not certified yet


def test_enterprise_defects_are_exactly_the_rule_failures():
    rows, defects = make_enterprises_with_defects(3, 800, 0.04)
    assert sorted(set(defects.values())) == sorted(ENTERPRISE_DEFECT_KINDS)
    by_kind = {k: {p for p, d in defects.items() if d == k} for k in ENTERPRISE_DEFECT_KINDS}
    assert failing_keys(rows, "tax_code", "tax_code", column="tax_code") == by_kind["tax_code_invalid"]
    assert {r["tax_code"] for r in rows if not EMAIL_RE.match(r["email"])} == by_kind["email_invalid"]
    assert failing_keys(rows, "tax_code", "enum", column="status",
                        values=["active", "suspended", "dissolving", "dissolved"]) == by_kind["status_unknown"]
    assert failing_keys(rows, "tax_code", "commune_code", column="commune_code") == by_kind["commune_unknown"]
    assert not failing_keys(rows, "tax_code", "phone_vn", column="phone")
    branches = [r for r in rows if r["enterprise_type"] == "branch"]
    assert 0.10 < len(branches) / len(rows) < 0.20
    assert all(re.fullmatch(r"\d{10}-\d{3}", r["tax_code"]) for r in branches if r["tax_code"] not in defects)
    assert 0.05 < sum(r["phone"] is None for r in rows) / len(rows) < 0.15
    assert {r["enterprise_type"] for r in rows} == {"llc_one", "llc_multi", "jsc", "private", "partnership", "branch"}
    assert all(r["registered_on"] < r["updated_at"].date() for r in rows)


def test_civil_servant_defects_are_exactly_the_rule_failures():
    rows, defects = make_civil_servants_with_defects(3, 600, 0.04)
    assert sorted(set(defects.values())) == sorted(CIVIL_SERVANT_DEFECT_KINDS)
    by_kind = {k: {p for p, d in defects.items() if d == k} for k in CIVIL_SERVANT_DEFECT_KINDS}
    assert failing_keys(rows, "servant_id", "cccd", column="personal_id", sex="sex",
                        birth_date="birth_date") == by_kind["cccd_invalid"]
    assert failing_keys(rows, "servant_id", "enum", column="category",
                        values=["cadre", "civil_servant", "public_employee"]) == by_kind["category_unknown"]
    assert {r["servant_id"] for r in rows if not EMAIL_RE.match(r["email"])} == by_kind["email_invalid"]
    assert all(r["email"].endswith("@ninhbinh.gov.vn") for r in rows if r["servant_id"] not in defects)
    assert all(re.fullmatch(r"CB37-\d{6}", r["servant_id"]) for r in rows)
    assert {r["category"] for r in rows if r["servant_id"] not in defects} == {"cadre", "civil_servant",
                                                                              "public_employee"}


# --- land: OAuth2 client credentials, offset paging ----------------------------------------------


def land_token(sb, basic=True, secret=None):
    creds = sb.credentials
    form = {"grant_type": "client_credentials"}
    secret = secret or creds.land_client_secret
    if basic:
        return requests.post(sb.urls["land"] + "/oauth/token", data=form, auth=(creds.land_client_id, secret),
                             timeout=10)
    form |= {"client_id": creds.land_client_id, "client_secret": secret}
    return requests.post(sb.urls["land"] + "/oauth/token", data=form, timeout=10)


def land_pages(sb, token, limit, **window):
    rows, offset = [], 0
    while True:
        body = get(sb, "land", "/api/v2/parcels", params={"offset": offset, "limit": limit, **window},
                   headers={"Authorization": f"Bearer {token}"}).json()
        rows += body["data"]
        offset += limit
        if offset >= body["total"]:
            return rows, body["total"]


def test_land_token_then_pages_yield_the_ground_truth(sb):
    answer = land_token(sb)
    assert answer.status_code == 200 and answer.json()["token_type"] == "Bearer"
    assert answer.json()["expires_in"] == 300 and answer.headers["Cache-Control"] == "no-store"
    token = land_token(sb, basic=False).json()["access_token"]  # form fields work too
    rows, total = land_pages(sb, token, limit=70)
    assert total == len(sb.data.land_parcels) and rows == [row_to_json(r) for r in sb.data.land_parcels]
    assert rows[0]["updated_at"].endswith("+07:00") and re.fullmatch(r"\d{4}-\d\d-\d\d", rows[0]["holder_birth_date"])
    body = get(sb, "land", "/api/v2/parcels", params={"limit": 5000},
               headers={"Authorization": f"Bearer {token}"}).json()
    assert (body["limit"], body["offset"], len(body["data"])) == (1000, 0, total)


def test_land_window_filters(sb):
    token = land_token(sb).json()["access_token"]
    stamps = [r["updated_at"] for r in sb.data.land_parcels]
    since, until = stamps[100], stamps[300]
    rows, total = land_pages(sb, token, 50, updated_since=since.isoformat(), updated_until=until.isoformat())
    expected = [r["parcel_id"] for r in sb.data.land_parcels if since <= r["updated_at"] < until]
    assert [r["parcel_id"] for r in rows] == expected and total == len(expected)
    bad = get(sb, "land", "/api/v2/parcels", params={"updated_until": "2025-08-01T00:00:00"},
              headers={"Authorization": f"Bearer {token}"})
    assert bad.status_code == 400 and "updated_until" in bad.json()["error"]


def test_land_auth_and_token_expiry(sb):
    wrong = land_token(sb, secret="wrong")
    assert wrong.status_code == 401 and wrong.json() == {"error": "invalid_client"}
    assert land_token(sb, basic=False, secret="wrong").status_code == 401
    grant = requests.post(sb.urls["land"] + "/oauth/token", data={"grant_type": "password"}, timeout=10)
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    missing = get(sb, "land", "/api/v2/parcels")
    assert missing.status_code == 401 and 'error="invalid_token"' in missing.headers["WWW-Authenticate"]
    sb.land.token_ttl_s = 0.3
    try:
        answer = land_token(sb).json()
        assert answer["expires_in"] == 1
        headers = {"Authorization": f"Bearer {answer['access_token']}"}
        assert get(sb, "land", "/api/v2/parcels", headers=headers).status_code == 200
        time.sleep(0.4)
        expired = get(sb, "land", "/api/v2/parcels", headers=headers)
        assert expired.status_code == 401 and 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
        fresh = land_token(sb).json()["access_token"]
        assert get(sb, "land", "/api/v2/parcels", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    finally:
        sb.land.token_ttl_s = 300


# --- business: HTTP Basic, cursor paging ----------------------------------------------------------


def business_pages(sb, limit, **window):
    rows, cursor, calls = [], None, 0
    while True:
        params = {"limit": limit, **window, **({"cursor": cursor} if cursor else {})}
        body = get(sb, "business", "/api/enterprises", params=params,
                   auth=(sb.credentials.business_user, sb.credentials.business_password)).json()
        rows, cursor, calls = rows + body["results"], body["next_cursor"], calls + 1
        if cursor is None:
            return rows, calls


def test_business_cursor_pages_yield_the_ground_truth(sb):
    rows, calls = business_pages(sb, limit=90)
    assert rows == [row_to_json(r) for r in sb.data.enterprises] and calls == 5
    assert rows[0]["registered_on"].count("-") == 2 and rows[0]["updated_at"].endswith("+07:00")


def test_business_window_and_bad_cursor(sb):
    stamps = [r["updated_at"] for r in sb.data.enterprises]
    since, until = stamps[50], stamps[250]
    rows, _ = business_pages(sb, 40, changed_since=since.isoformat(), changed_until=until.isoformat())
    assert [r["tax_code"] for r in rows] == [r["tax_code"] for r in sb.data.enterprises
                                             if since <= r["updated_at"] < until]
    auth = (sb.credentials.business_user, sb.credentials.business_password)
    for cursor in ("not-a-cursor", "WzEsMl0", "%%%"):
        bad = get(sb, "business", "/api/enterprises", params={"cursor": cursor}, auth=auth)
        assert bad.status_code == 400 and "cursor" in bad.json()["error"]


def test_business_basic_auth(sb):
    assert get(sb, "business", "/api/enterprises").status_code == 401
    wrong = get(sb, "business", "/api/enterprises", auth=(sb.credentials.business_user, "wrong"))
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic ")
    assert "error" in wrong.json()


# --- civil servants: mutual TLS, next links -------------------------------------------------------


def servant_pages(sb, url, **params):
    rows, links = [], []
    while url:
        body = requests.get(url, params=params, timeout=10, **mtls(sb)).json()
        rows, url, params = rows + body["items"], body["links"]["next"], {}
        links.append(body["links"]["self"])
    return rows, links


def test_civil_servants_next_links_yield_the_ground_truth(sb):
    rows, links = servant_pages(sb, sb.urls["civil_servants"] + "/api/v1/civil-servants", per_page=150)
    assert rows == [row_to_json(r) for r in sb.data.civil_servants] and len(links) == 3
    assert all(link.startswith(sb.urls["civil_servants"] + "/api/v1/civil-servants?") for link in links)
    default = get(sb, "civil_servants", "/api/v1/civil-servants").json()
    assert len(default["items"]) == 200 and "per_page=200" in default["links"]["next"]


def test_civil_servants_window_is_kept_in_next_links(sb):
    stamps = [r["updated_at"] for r in sb.data.civil_servants]
    after, before = stamps[20], stamps[380]
    rows, links = servant_pages(sb, sb.urls["civil_servants"] + "/api/v1/civil-servants", per_page=100,
                                modified_after=after.isoformat(), modified_before=before.isoformat())
    assert [r["servant_id"] for r in rows] == [r["servant_id"] for r in sb.data.civil_servants
                                               if after <= r["updated_at"] < before]
    assert len(links) == 4 and all("modified_after=" in x and "modified_before=" in x for x in links)
    bad = get(sb, "civil_servants", "/api/v1/civil-servants", params={"per_page": "0"})
    assert bad.status_code == 400 and "per_page" in bad.json()["error"]


def test_civil_servants_require_a_client_certificate(sb):
    url = sb.urls["civil_servants"] + "/api/v1/civil-servants"
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is a ConnectionError
        requests.get(url, verify=sb.tls.ca_cert, timeout=5)
    with pytest.raises(requests.exceptions.SSLError):  # and the server is only trusted through the CA
        requests.get(url, cert=(sb.tls.client_cert, sb.tls.client_key), timeout=5)
    assert get(sb, "civil_servants", "/api/v1/civil-servants", params={"per_page": 1}).status_code == 200


# --- tthc: updated_until ------------------------------------------------------------------------


def test_tthc_updated_until_is_exclusive(sb):
    stamps = [d["updated_at"] for d in sb.data.dossiers]
    since, until = stamps[100], stamps[400]
    items, total = all_rest_pages(sb, page_size=60, updated_since=since.isoformat(), updated_until=until.isoformat())
    expected = [d["dossier_id"] for d in sb.data.dossiers if since <= d["updated_at"] < until]
    assert [i["dossier_id"] for i in items] == expected and total == len(expected)
    assert rest(sb, updated_until=stamps[0].isoformat()).json()["total"] == 0
    bad = rest(sb, updated_until="2025-08-01T00:00:00")
    assert bad.status_code == 400 and "updated_until" in bad.json()["error"]


# --- fault kinds ---------------------------------------------------------------------------------


def outcome(sb, system="tthc", timeout=5.0):
    """What a client sees of one data request: a status, or the exception's class name."""
    try:
        if system == "tthc":
            response = requests.get(sb.tthc_url + "/api/v1/dossiers", headers={"X-API-Key": API_KEY},
                                    timeout=timeout)
        else:
            response = get(sb, system, "/api/v1/civil-servants", timeout=timeout)
        response.json()
        return response.status_code
    except ValueError:
        return "truncated"
    except requests.Timeout:
        return "timeout"
    except requests.ConnectionError:
        return "reset"


def test_every_fault_kind_is_observable_from_a_client(sb, faults):
    plan = faults["tthc"]
    plan.hang_s, plan.retry_after_s = 0.5, 7
    plan.reset_rate = 1.0
    assert outcome(sb) == "reset"
    plan.clear()
    plan.timeout_rate = 1.0
    started = time.perf_counter()
    assert outcome(sb, timeout=0.15) == "timeout" and time.perf_counter() - started < 0.45
    assert outcome(sb, timeout=5) == 200  # a patient client gets the real answer
    plan.clear()
    plan.throttle_rate = 1.0
    throttled = rest(sb)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "7"
    plan.clear()
    full = rest(sb).content
    plan.malformed_rate = 1.0
    broken = rest(sb)
    assert broken.status_code == 200 and int(broken.headers["Content-Length"]) == len(broken.content)
    assert broken.content == full[:len(full) // 2]
    with pytest.raises(ValueError):
        broken.json()
    assert plan.injected_by_kind == {"reset": 1, "timeout": 2, "throttle": 1, "malformed": 1}
    assert faults.injected_by_kind == plan.injected_by_kind and faults.injected == 5
    assert rest(sb, "/health").status_code == 200 and plan.requests == 6


def test_reset_and_malformed_on_tls_and_soap(sb, soap, faults):
    faults["civil_servants"].reset_rate = 1.0
    assert outcome(sb, "civil_servants") == "reset"
    faults["population"].malformed_rate = 1.0
    with pytest.raises(Exception) as err:  # unclosed XML
        soap.service.GetCitizen(sb.data.citizens[0]["personal_id"])
    assert "xml" in type(err.value).__name__.lower() or "xml" in str(err.value).lower()
    assert requests.get(sb.population_wsdl, timeout=10).content.rstrip().endswith(b">")  # WSDL is exempt


def test_fault_sequence_is_deterministic_for_a_seed(sb, faults):
    def run():
        faults.reset(seed=21)
        faults["tthc"].hang_s = 0.3
        faults["tthc"].error_rate, faults["tthc"].reset_rate, faults["tthc"].timeout_rate = 0.15, 0.15, 0.15
        faults["tthc"].throttle_rate, faults["tthc"].malformed_rate = 0.15, 0.15
        return [outcome(sb, timeout=0.1) for _ in range(16)]

    first = run()
    assert first == run()
    assert {503, 429, "reset", "timeout", "truncated"} <= set(first) and 200 in first


def test_fault_board_sets_every_plan_and_sums_counters(sb, faults):
    assert set(faults) == set(SYSTEMS) and len(faults) == 10
    faults.transient(0.3)
    assert all(p.error_rate == p.reset_rate == p.timeout_rate == pytest.approx(0.1) for _, p in faults.items())
    assert faults.throttle_rate == 0.0 and faults.error_rate == pytest.approx(0.1)
    faults.throttle_rate = 0.2
    assert all(p.throttle_rate == 0.2 for _, p in faults.items())
    faults["land"].latency_s = 0.5
    assert faults.latency_s == 0.5 and faults["tthc"].latency_s == 0.0
    faults.clear()
    assert all(p.error_rate == p.throttle_rate == p.latency_s == 0.0 for _, p in faults.items())
    faults.reset()
    rest(sb)
    get(sb, "business", "/api/enterprises")
    assert faults.requests == 2 and faults["tthc"].requests == faults["business"].requests == 1
    with pytest.raises(AttributeError):
        faults.error_rat = 1.0  # a typo does not pass silently


def test_fault_plan_draws_are_a_pure_function_of_the_seed():
    def kinds(seed):
        plan = FaultPlan(seed=seed)
        plan.transient(0.6)
        plan.throttle_rate = plan.malformed_rate = 0.1
        return [plan.draw("POST") for _ in range(300)], plan

    first, plan = kinds(8)
    assert first == kinds(8)[0] and first != kinds(9)[0]
    assert plan.requests == 300 and plan.injected == sum(d.kind is not None for d in first)
    assert set(plan.injected_by_kind) == set(FAULT_KINDS)
    lost = [d.after_processing for d in first if d.kind in ("reset", "timeout")]
    assert 0.3 < sum(lost) / len(lost) < 0.7
    assert not any(d.after_processing for d in first if d.kind not in ("reset", "timeout"))


class _Counter:
    """A tiny push endpoint: counts the POSTs it processed."""

    def __init__(self):
        self.processed = 0

    def __call__(self, environ, start_response):
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        self.processed += 1
        body = json.dumps({"accepted": self.processed}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


@pytest.mark.parametrize("kind", ["reset", "timeout"])
def test_post_loses_the_acknowledgement_after_processing(kind):
    push = _Counter()
    plan = FaultPlan(seed=5, hang_s=0.25)
    setattr(plan, f"{kind}_rate", 1.0)
    server, thread = serve_wsgi(with_faults(push, plan))
    url = f"http://127.0.0.1:{server.server_port}/push"
    try:
        twin = FaultPlan(seed=5, **{f"{kind}_rate": 1.0})
        expected = [twin.draw("POST").after_processing for _ in range(8)]
        assert 2 <= sum(expected) <= 6, "the seed should mix both cases"
        processed_when_client_gave_up = []
        for _ in range(8):
            before = push.processed
            with pytest.raises((requests.ConnectionError, requests.Timeout)):
                requests.post(url, json={"report": 1}, timeout=0.1)
            processed_when_client_gave_up.append(push.processed > before)
            if kind == "timeout":  # a hang before processing still processes, after hang_s
                time.sleep(0.3)
                assert push.processed == before + 1
        assert processed_when_client_gave_up == expected  # processed before the ack was lost
        assert push.processed == (8 if kind == "timeout" else sum(expected))
        assert plan.injected_by_kind == {kind: 8}
        plan.clear()
        assert requests.post(url, json={}, timeout=5).json() == {"accepted": push.processed}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
