"""Tests for the sandbox simulators: real loopback HTTP, real zeep, real requests."""

from __future__ import annotations

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

from sandbox import FaultPlan, SandboxData, start_sandbox
from sandbox.citizens import CITIZEN_DEFECT_KINDS, CITIZEN_FIELDS, century_sex_digit
from sandbox.common import VN_TZ, WINDOW_END_UTC, WINDOW_END_VN, WINDOW_START_UTC, parse_instant
from sandbox.communes import UNKNOWN_COMMUNE, commune_codes, ninh_binh_communes
from sandbox.data import make_citizens, make_dossiers
from sandbox.dossiers import DOSSIER_DEFECT_KINDS, DOSSIER_FIELDS
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
    """The shared fault plan, restored to 'no faults' afterwards."""
    yield sb.faults
    sb.faults.error_rate, sb.faults.latency_s = 0.0, 0.0


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
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    missing = rest(sb, "/api/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()


def test_concurrent_requests(sb, soap):
    def fetch(page):
        return rest(sb, page=page, page_size=50).json()["items"], soap.service.ListChangedCitizens(
            since=None, page=page, page_size=50).items

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fetch, range(1, 9)))
    assert sum(len(r[0]) for r in results) == 400 and sum(len(r[1]) for r in results) == 400


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


def test_python_dash_m_sandbox_starts_and_stops():
    with subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--citizens", "20", "--dossiers", "20", "--seed", "3"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            wsdl_line, rest_line = proc.stdout.readline(), proc.stdout.readline()
            assert wsdl_line.startswith("population WSDL: http://127.0.0.1:") and wsdl_line.strip().endswith("/?wsdl")
            url = rest_line.split()[-1]
            assert requests.get(url, timeout=10).json()["total"] == 20
            assert zeep.Client(wsdl_line.split()[-1]).service.ListChangedCitizens(since=None).total == 20
        finally:
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in stderr
