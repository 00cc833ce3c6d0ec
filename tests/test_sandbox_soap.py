"""SOAP sandbox services over real loopback HTTP with real, hardened zeep clients.

Covers WS-Security (``sandbox.wsse``), the civil-status registry, the reporting
system (push, idempotent on ``report_id``) and ``until`` on the population service.
The servers are started here with wsgiref, independent of ``sandbox.server``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests
import zeep
import zeep.exceptions
import zeep.wsse.username
from lxml import etree
from zeep.helpers import serialize_object

from loopback import serving
from sandbox.citizens import century_sex_digit, make_citizens
from sandbox.civil_status import (
    CIVIL_STATUS_DEFECT_KINDS, CIVIL_STATUS_FIELDS, EVENT_TYPES, LEGACY_EVENT_CODES,
    make_civil_status_events_with_defects,
)
from sandbox.civil_status_soap import encode_page_token, make_civil_status_app
from sandbox.common import VN_TZ, WINDOW_END_UTC, WINDOW_START_UTC
from sandbox.communes import UNKNOWN_COMMUNE, commune_codes
from sandbox.households import (HOUSEHOLD_DEFECT_KINDS, HOUSEHOLD_FIELDS, LEAVE_REASONS, RELATIONS, household_key,
                                make_household_members_with_defects, two_heads)
from sandbox.population_soap import make_population_app
from sandbox.reporting_soap import ReportingInbox, make_reporting_app
from sandbox.wsse import WSSE_NS

USER, PASSWORD = "lgsp-ninhbinh", "correct horse battery staple"
SEED, EVENTS, RATE = 37, 600, 0.2
MEMBERS = 800
HARDENED = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True)
CCCD_PROVINCES = ("001", "035", "036", "037")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Any]]:
    """Civil status, reporting and population on loopback; yields WSDL URLs, data and the inbox."""
    events, defects = make_civil_status_events_with_defects(SEED, EVENTS, RATE)
    good = [e for e in events if e["event_id"] not in defects]
    members, member_defects = make_household_members_with_defects(SEED, MEMBERS, RATE, good)
    citizens = make_citizens(SEED, 300)
    inbox = ReportingInbox()
    apps = {
        "civil_status": make_civil_status_app(events, USER, PASSWORD, members),
        "reporting": make_reporting_app(inbox, USER, PASSWORD),
        "population": make_population_app(citizens),
    }
    with ExitStack() as running:
        urls = {name: running.enter_context(serving(app)) + "/?wsdl" for name, app in apps.items()}
        yield {"urls": urls, "events": events, "defects": defects, "citizens": citizens, "inbox": inbox,
               "members": members, "member_defects": member_defects}


def client(url: str, password: str | None = PASSWORD, **token: Any) -> zeep.Client:
    wsse = None if password is None else zeep.wsse.username.UsernameToken(USER, password, **token)
    return zeep.Client(url, settings=HARDENED, wsse=wsse)


@pytest.fixture(scope="module")
def civil(servers) -> zeep.Client:
    return client(servers["urls"]["civil_status"])


@pytest.fixture(scope="module")
def reporting(servers) -> zeep.Client:
    return client(servers["urls"]["reporting"])


def fault_code(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value.code).rsplit(":", 1)[-1]


def all_events(civil: zeep.Client, page_size: int, operation: str = "ListCivilStatusEvents",
               **window: Any) -> tuple[list[dict], set[int]]:
    rows, totals, token = [], set(), None
    while True:
        page = getattr(civil.service, operation)(page_token=token, page_size=page_size, **window)
        rows += [dict(serialize_object(e)) for e in page["items"]]
        totals.add(page.total)
        token = page.next_page_token
        if token is None:
            return rows, totals


def as_utc(row: dict) -> dict:
    return {**row, "updated_at": row["updated_at"].astimezone(UTC)}


# --- civil-status data --------------------------------------------------------------------------


def valid_cccd(pid: str, sex: str, born: date) -> bool:
    return (re.fullmatch(r"\d{12}", pid) is not None and pid[:3] in CCCD_PROVINCES
            and pid[3] == century_sex_digit(sex, born.year) and pid[4:6] == f"{born.year % 100:02d}")


def test_civil_status_generation_is_deterministic():
    assert make_civil_status_events_with_defects(5, 200, 0.1) == make_civil_status_events_with_defects(5, 200, 0.1)
    assert make_civil_status_events_with_defects(5, 200, 0.1) != make_civil_status_events_with_defects(6, 200, 0.1)


def test_civil_status_rows_keep_the_rules_and_carry_one_defect_each(servers):
    rows, defects = servers["events"], servers["defects"]
    assert len({r["event_id"] for r in rows}) == len(rows) == EVENTS
    assert rows == sorted(rows, key=lambda r: (r["updated_at"], r["event_id"]))
    assert Counter(defects.values()) == {k: EVENTS * RATE / 4 for k in CIVIL_STATUS_DEFECT_KINDS}
    for r in rows:
        assert tuple(r) == CIVIL_STATUS_FIELDS and re.fullmatch(r"HT37-2025-\d{6}", r["event_id"])
        assert re.fullmatch(r"\d+/2025", r["registration_no"])
        assert WINDOW_START_UTC <= r["updated_at"] <= WINDOW_END_UTC
        assert r["updated_at"].date() >= r["registered_on"] - timedelta(days=1)
        kind = defects.get(r["event_id"])
        assert (kind == "event_type_unknown") == (r["event_type"] not in EVENT_TYPES)
        assert (kind == "cccd_invalid") == (not valid_cccd(r["personal_id"], r["sex"], r["birth_date"]))
        assert (kind == "commune_unknown") == (r["commune_code"] not in commune_codes())
        assert (kind == "registered_before_event") == (r["registered_on"] < r["event_date"])
        assert r["birth_date"] <= r["event_date"]
        if kind == "commune_unknown":
            assert r["commune_code"] == UNKNOWN_COMMUNE
        if r["event_type"] == "birth":
            assert r["birth_date"] == r["event_date"] and r["birth_date"].year == 2025
        if r["event_type"] in ("marriage", LEGACY_EVENT_CODES["marriage"]):
            assert re.fullmatch(r"\d{12}", r["spouse_personal_id"]) and r["spouse_personal_id"][:3] in CCCD_PROVINCES
        else:
            assert r["spouse_personal_id"] is None
    assert len({r["updated_at"] for r in rows}) < len(rows), "equal timestamps expected (nightly sync)"
    assert {r["event_type"] for r in rows} >= set(EVENT_TYPES)


def test_household_generation_is_deterministic():
    events, _ = make_civil_status_events_with_defects(5, 100, 0.0)
    assert make_household_members_with_defects(5, 200, 0.1, events) == \
        make_household_members_with_defects(5, 200, 0.1, events)
    assert make_household_members_with_defects(5, 200, 0.1, events) != \
        make_household_members_with_defects(6, 200, 0.1, events)


def test_household_rows_keep_the_rules_and_follow_the_registrys_births_and_deaths(servers):
    rows, defects, events = servers["members"], servers["member_defects"], servers["events"]
    assert len({household_key(r) for r in rows}) == len(rows) == MEMBERS
    assert rows == sorted(rows, key=lambda r: (r["updated_at"], r["household_id"], r["personal_id"]))
    assert Counter(defects.values()) == {k: MEMBERS * RATE / 4 for k in HOUSEHOLD_DEFECT_KINDS}
    for r in rows:
        assert tuple(r) == HOUSEHOLD_FIELDS and re.fullmatch(r"HK37-\d{5}-\d{6}", r["household_id"])
        assert WINDOW_START_UTC <= r["updated_at"] <= WINDOW_END_UTC
        kind = defects.get(household_key(r))
        assert (kind == "relation_unknown") == (r["relation"] not in RELATIONS)
        assert (kind == "cccd_invalid") == (not valid_cccd(r["personal_id"], r["sex"], r["birth_date"]))
        assert (kind == "commune_unknown") == (r["commune_code"] not in commune_codes())
        assert (kind == "left_before_joined") == (r["left_on"] is not None and r["left_on"] < r["joined_on"])
        assert r["birth_date"] <= r["joined_on"] and (r["left_on"] is None) == (r["leave_reason"] is None)
        assert r["leave_reason"] in (None, *LEAVE_REASONS) and re.fullmatch(r"\d{12}", r["head_personal_id"])
    heads = Counter(r["household_id"] for r in rows if r["relation"] in ("head", "Chủ hộ"))
    doubled = {h: n for h, n in heads.items() if n != 1}
    assert doubled and set(doubled.values()) == {2}, "some record the spouse as head too (a rule across rows)"
    assert all(two_heads(h) for h in doubled)
    assert set(heads) >= {r["household_id"] for r in rows} - {rows[-1]["household_id"]}
    moved = [r for r in rows if r["leave_reason"] == "moved" and defects.get(household_key(r)) is None]
    assert moved and all(any(o["personal_id"] == r["personal_id"] and o["relation"] == "head" and
                             o["joined_on"] == r["left_on"] for o in rows) for r in moved), "moved out: heads their own"
    by_person = {r["personal_id"]: r for r in rows if defects.get(household_key(r)) is None}
    births = [e for e in events if e["event_type"] == "birth" and e["personal_id"] in by_person]
    deaths = [e for e in events if e["event_type"] == "death" and e["personal_id"] in by_person]
    assert len(births) > 20 and len(deaths) > 20
    for e in births:
        assert (by_person[e["personal_id"]]["joined_on"], by_person[e["personal_id"]]["commune_code"]) == \
            (e["registered_on"], e["commune_code"]), "a registered birth joins a household of its commune"
    for e in deaths:
        assert (by_person[e["personal_id"]]["left_on"], by_person[e["personal_id"]]["leave_reason"]) == \
            (e["event_date"], "died"), "a registered death ends the membership"
    assert not {e["personal_id"] for e in events if e["event_id"] in servers["defects"]} & set(by_person)


# --- civil-status SOAP ----------------------------------------------------------------------------


def test_household_members_page_by_token_to_exactly_the_ground_truth(servers, civil):
    members = servers["members"]
    rows, totals = all_events(civil, 45, "ListHouseholdMembers")
    assert [as_utc(r) for r in rows] == members and totals == {MEMBERS}
    since, until = members[100]["updated_at"], members[600]["updated_at"]
    window, _ = all_events(civil, 60, "ListHouseholdMembers", since=since, until=until)
    assert [as_utc(r) for r in window] == [r for r in members if since <= r["updated_at"] < until]
    with pytest.raises(zeep.exceptions.Fault) as err:
        civil.service.ListHouseholdMembers(since=datetime(2025, 8, 1))
    assert fault_code(err) == "Client.InvalidArgument"


def test_paging_by_token_returns_exactly_the_ground_truth(servers, civil):
    rows, totals = all_events(civil, page_size=37)
    assert [as_utc(r) for r in rows] == servers["events"] and totals == {EVENTS}
    one_page = civil.service.ListCivilStatusEvents(page_size=5000)  # capped at 1000
    assert len(one_page["items"]) == EVENTS and one_page.next_page_token is None


def test_window_since_inclusive_until_exclusive(servers, civil):
    events = servers["events"]
    since, until = events[100]["updated_at"], events[450]["updated_at"]
    expected = [r for r in events if since <= r["updated_at"] < until]
    rows, totals = all_events(civil, page_size=50, since=since, until=until)
    assert [as_utc(r) for r in rows] == expected and totals == {len(expected)}
    tied = Counter(r["updated_at"] for r in events).most_common(1)[0][0]
    at_tie, _ = all_events(civil, page_size=1000, since=tied, until=tied + timedelta(seconds=1))
    assert len(at_tie) >= 2 and {as_utc(r)["updated_at"] for r in at_tie} == {tied}
    assert civil.service.ListCivilStatusEvents(since=tied, until=tied).total == 0
    assert civil.service.ListCivilStatusEvents(since=tied.astimezone(VN_TZ), page_size=1000).total == sum(
        r["updated_at"] >= tied for r in events)


@pytest.mark.parametrize("call", [
    {"since": datetime(2025, 8, 1)},
    {"until": datetime(2025, 8, 1)},
    {"since": datetime(2025, 9, 1, tzinfo=UTC), "until": datetime(2025, 8, 1, tzinfo=UTC)},
    {"page_size": 0},
    {"page_token": "not-a-token"},
    {"page_token": encode_page_token(10**6, None, None)},
])
def test_bad_arguments_are_client_invalid_argument(civil, call):
    with pytest.raises(zeep.exceptions.Fault) as err:
        civil.service.ListCivilStatusEvents(**call)
    assert fault_code(err) == "Client.InvalidArgument"


def test_a_token_from_another_window_is_refused(civil):
    first = civil.service.ListCivilStatusEvents(since=datetime(2025, 8, 1, tzinfo=UTC), page_size=10)
    assert first.next_page_token
    with pytest.raises(zeep.exceptions.Fault) as err:
        civil.service.ListCivilStatusEvents(since=datetime(2025, 8, 2, tzinfo=UTC), page_token=first.next_page_token)
    assert fault_code(err) == "Client.InvalidArgument" and "page_token" in err.value.message
    same = civil.service.ListCivilStatusEvents(since=datetime(2025, 8, 1, tzinfo=UTC), page_size=10,
                                               page_token=first.next_page_token)
    assert same["items"] and same["items"][0].event_id != first["items"][0].event_id


def test_get_civil_status_event(servers, civil):
    row = servers["events"][123]
    assert as_utc(dict(serialize_object(civil.service.GetCivilStatusEvent(row["event_id"])))) == row
    with pytest.raises(zeep.exceptions.Fault) as err:
        civil.service.GetCivilStatusEvent("HT37-2025-999999")
    assert fault_code(err) == "Client.NotFound"


# --- WS-Security ------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", [None, "wrong", ""])
def test_missing_or_wrong_credentials_are_client_authentication(servers, password):
    for name in ("civil_status", "reporting"):
        with pytest.raises(zeep.exceptions.Fault) as err:
            svc = client(servers["urls"][name], password).service
            svc.GetCivilStatusEvent("x") if name == "civil_status" else svc.SubmitIndicatorReport(report=report("auth"))
        assert fault_code(err) == "Client.Authentication"


def test_password_digest_accepted_and_stale_digest_refused(servers):
    url, event_id = servers["urls"]["civil_status"], servers["events"][0]["event_id"]
    assert client(url, use_digest=True).service.GetCivilStatusEvent(event_id).event_id == event_id
    stale = datetime.now(UTC) - timedelta(minutes=10)
    with pytest.raises(zeep.exceptions.Fault) as err:
        client(url, use_digest=True, created=stale).service.GetCivilStatusEvent(event_id)
    assert fault_code(err) == "Client.Authentication"
    with pytest.raises(zeep.exceptions.Fault) as err:
        client(url, "wrong", use_digest=True).service.GetCivilStatusEvent(event_id)
    assert fault_code(err) == "Client.Authentication"


def _signed_envelope(civil: zeep.Client, event_id: str) -> etree._Element:
    return civil.create_message(civil.service, "GetCivilStatusEvent", event_id=event_id)


def _post(url: str, body: bytes) -> requests.Response:
    return requests.post(url.removesuffix("?wsdl"), data=body, timeout=10,
                         headers={"Content-Type": "text/xml; charset=utf-8"})


def test_must_understand_security_header_is_served(servers, civil):
    event_id = servers["events"][5]["event_id"]
    envelope = _signed_envelope(civil, event_id)
    security = envelope.find(f".//{{{WSSE_NS}}}Security")
    security.set("{http://schemas.xmlsoap.org/soap/envelope/}mustUnderstand", "1")
    response = _post(servers["urls"]["civil_status"], etree.tostring(envelope))
    assert response.status_code == 200 and event_id in response.text


def test_dtd_and_broken_xml_are_refused_before_the_service(servers, civil):
    url = servers["urls"]["civil_status"]
    body = etree.tostring(_signed_envelope(civil, "x")).decode()
    hostile = '<!DOCTYPE e [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>' + body.replace("x<", "&b;<")
    for payload in (hostile.encode(), body[:-20].encode()):
        response = _post(url, payload)
        assert response.status_code == 500 and "Client.XmlSyntaxError" in response.text
    assert requests.get(url, timeout=10).status_code == 200  # the WSDL needs no token


# --- reporting ---------------------------------------------------------------------------------------


def report(report_id: str, **changes: Any) -> dict[str, Any]:
    base = {"report_id": report_id, "province_code": "37", "indicator_code": "online_submission_rate",
            "indicator_version": 1, "unit_level": "commune", "unit_code": "14464", "period": "2025-08",
            "numerator": 78, "denominator": 100, "value": 0.78,
            "computed_at": datetime(2025, 9, 1, 8, 0, tzinfo=UTC)}
    return {**base, **changes}


def test_report_accepted_then_duplicate_then_conflict(servers, reporting):
    inbox: ReportingInbox = servers["inbox"]
    first = reporting.service.SubmitIndicatorReport(report=report("r-accept"))
    assert first.status == "accepted" and first.receipt_no.startswith("TN37-")
    replays = inbox.replays
    again = reporting.service.SubmitIndicatorReport(report=report("r-accept"))
    assert (again.status, again.receipt_no, again.received_at) == ("duplicate", first.receipt_no, first.received_at)
    assert inbox.replays == replays + 1 and inbox.apply_counts["r-accept"] == 1
    with pytest.raises(zeep.exceptions.Fault) as err:
        reporting.service.SubmitIndicatorReport(report=report("r-accept", numerator=79, value=0.79))
    assert fault_code(err) == "Client.Conflict" and "numerator" in err.value.message
    assert inbox.reports["r-accept"] == report("r-accept")
    province = reporting.service.SubmitIndicatorReport(
        report=report("r-province", unit_level="province", unit_code="37", period="2025-Q3", value=None))
    assert province.status == "accepted" and inbox.reports["r-province"]["value"] is None


@pytest.mark.parametrize(("changes", "field"), [
    ({"numerator": 101}, "numerator"),
    ({"value": 1.2}, "value"),
    ({"value": -0.1}, "value"),
    ({"denominator": -1, "numerator": -2}, "denominator"),
    ({"period": "2025-13"}, "period"),
    ({"unit_level": "district"}, "unit_level"),
    ({"unit_code": UNKNOWN_COMMUNE}, "unit_code"),
    ({"province_code": "01"}, "province_code"),
])
def test_invalid_report_names_the_field(servers, reporting, changes, field):
    with pytest.raises(zeep.exceptions.Fault) as err:
        reporting.service.SubmitIndicatorReport(report=report(f"r-bad-{field}", **changes))
    assert fault_code(err) == "Client.InvalidArgument" and err.value.message.startswith(field)
    assert f"r-bad-{field}" not in servers["inbox"].reports


def test_concurrent_resubmissions_apply_once(servers, reporting):
    def submit(_: int) -> str:
        return reporting.service.SubmitIndicatorReport(report=report("r-race")).status

    with ThreadPoolExecutor(8) as pool:
        statuses = Counter(pool.map(submit, range(16)))
    assert statuses == {"accepted": 1, "duplicate": 15} and servers["inbox"].apply_counts["r-race"] == 1


# --- population `until` ------------------------------------------------------------------------------


def test_population_until_is_exclusive(servers):
    citizens, soap = servers["citizens"], zeep.Client(servers["urls"]["population"], settings=HARDENED)
    since, until = citizens[50]["updated_at"], citizens[200]["updated_at"]
    expected = [c["personal_id"] for c in citizens if since <= c["updated_at"] < until]
    got, page = [], 1
    while True:
        result = soap.service.ListChangedCitizens(since=since, until=until, page=page, page_size=40)
        got += [c.personal_id for c in result["items"]]
        if page >= result.total_pages:
            break
        page += 1
    assert got == expected and result.total == len(expected)
    assert soap.service.ListChangedCitizens(until=until, page_size=1000).total == sum(
        c["updated_at"] < until for c in citizens)
    with pytest.raises(zeep.exceptions.Fault) as err:
        soap.service.ListChangedCitizens(since=until, until=since)
    assert fault_code(err) == "Client.InvalidArgument"
