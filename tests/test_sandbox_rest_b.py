"""Tests for the DVCQG, documents and health insurance simulators: real loopback HTTP, real requests."""

from __future__ import annotations

import re
import threading
import time
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, time as dtime, timedelta
from typing import Any

import pytest
import requests

from loopback import serve
from sandbox.citizens import century_sex_digit
from sandbox.common import VN_TZ, WINDOW_END_UTC, WINDOW_START_UTC
from sandbox.communes import UNKNOWN_COMMUNE, commune_codes
from sandbox.documents import DIRECTIONS, DOCUMENT_DEFECT_KINDS, DOCUMENT_FIELDS, DOCUMENT_TYPES
from sandbox.documents import make_documents_with_defects
from sandbox.documents_rest import document_to_json, make_documents_app
from sandbox.dvcqg_catalog import boundary_free
from sandbox.dvcqg_rest import DvcqgState, make_dvcqg_app, make_procedures, parse_portal_time, portal_time
from sandbox.health_insurance import CARD_DEFECT_KINDS, CARD_FIELDS, make_cards_with_defects
from sandbox.health_insurance_rest import card_to_json, make_health_insurance_app
from sandbox.procedures import PROCEDURES

SEED = 37
TOKEN = "doc-token"
API_KEY = "bhyt-key"
USER, PASSWORD = "lgsp", "s3cret"
CARD_NO_RE = re.compile(r"[A-Z]{2}[1-5]37[0-9]{10}")
DOCUMENT_ID_RE = re.compile(r"VB37-2025-[0-9]{6}")


@pytest.fixture(scope="module")
def documents() -> tuple[list[dict[str, Any]], dict[str, str]]:
    return make_documents_with_defects(SEED, 600, defect_rate=0.02)


@pytest.fixture(scope="module")
def cards() -> tuple[list[dict[str, Any]], dict[str, str]]:
    return make_cards_with_defects(SEED, 600, defect_rate=0.02)


@pytest.fixture(scope="module")
def documents_url(documents) -> Iterator[str]:
    yield from serve(make_documents_app(documents[0], TOKEN))


@pytest.fixture(scope="module")
def cards_url(cards) -> Iterator[str]:
    yield from serve(make_health_insurance_app(cards[0], API_KEY))


@pytest.fixture()
def dvcqg() -> Iterator[tuple[str, DvcqgState]]:
    state = DvcqgState(make_procedures(SEED), USER, PASSWORD)
    for url in serve(make_dvcqg_app(state)):
        yield url, state


def _cccd_ok(pid: str, sex: str, birth) -> bool:
    return (len(pid) == 12 and pid.isdigit() and pid[3] == century_sex_digit(sex, birth.year)
            and pid[4:6] == f"{birth.year % 100:02d}")


# --- documents -------------------------------------------------------------------------------


def _doc_get(url: str, token: str | None = TOKEN, **params: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(url + "/api/documents", params=params, headers=headers, timeout=10)


def _all_documents(url: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
    rows, pages, token = [], 0, None
    while True:
        body = _doc_get(url, **params, **({"page_token": token} if token else {})).json()
        rows += body["documents"]
        pages += 1
        token = body.get("nextPageToken")
        if not token:
            return rows, pages


def test_document_generation(documents):
    rows, defects = documents
    assert (rows, defects) == make_documents_with_defects(SEED, 600, defect_rate=0.02)
    assert rows != make_documents_with_defects(SEED + 1, 600, defect_rate=0.02)[0]
    assert sorted(set(defects.values())) == sorted(DOCUMENT_DEFECT_KINDS) and len(defects) == 12
    assert rows == sorted(rows, key=lambda r: (r["updated_at"], r["document_id"]))
    assert len({r["document_id"] for r in rows}) == len(rows)
    for r in rows:
        kind = defects.get(r["document_id"])
        assert tuple(r) == DOCUMENT_FIELDS and DOCUMENT_ID_RE.fullmatch(r["document_id"])
        assert WINDOW_START_UTC <= r["updated_at"] <= WINDOW_END_UTC and r["updated_at"].tzinfo == UTC
        assert r["document_type"] in DOCUMENT_TYPES and re.fullmatch(r"\d+/\S+-\S+", r["number_symbol"])
        assert (kind == "direction_unknown") == (r["direction"] not in DIRECTIONS)
        assert (kind == "summary_missing") == (r["summary"] is None)
        if r["summary"] is not None:
            nfc = unicodedata.normalize("NFC", r["summary"])
            assert (kind == "summary_not_nfc") == (r["summary"] != nfc)
        issued_start = datetime.combine(r["issued_on"], dtime(0), VN_TZ)
        if r["direction"] == "outgoing":
            assert r["received_at"] is None
        elif r["direction"] == "incoming":
            assert (kind == "received_before_issued") == (r["received_at"] < issued_start)
        assert (r["signer"] is None) == (not r["digitally_signed"])


def test_documents_paging_returns_the_ground_truth(documents, documents_url):
    rows, pages = _all_documents(documents_url, page_size=70)
    assert rows == [document_to_json(r) for r in documents[0]]
    assert pages == 9  # 600 / 70, no empty trailing page
    assert rows[0]["updated_at"].endswith("+07:00") and re.fullmatch(r"\d{4}-\d{2}-\d{2}", rows[0]["issued_on"])


def test_documents_window(documents, documents_url):
    truth = documents[0]
    since, until = truth[100]["updated_at"], truth[400]["updated_at"]
    rows, _ = _all_documents(documents_url, page_size=45, since=since.isoformat(),
                             until=until.astimezone(VN_TZ).isoformat())
    expected = [document_to_json(r) for r in truth if since <= r["updated_at"] < until]
    assert rows == expected and rows[0]["document_id"] == truth[100]["document_id"]


def test_documents_tokens_and_parameters(documents_url):
    first = _doc_get(documents_url, page_size=10).json()
    token = first["nextPageToken"]
    second = _doc_get(documents_url, page_size=10, page_token=token).json()["documents"]
    assert second[0] != first["documents"][-1]
    for bad in ("garbage", token[:-1] + ("0" if token[-1] != "0" else "1"), "x." + token.split(".")[1]):
        resp = _doc_get(documents_url, page_token=bad)
        assert resp.status_code == 400 and "page_token" in resp.json()["error"]
    changed = _doc_get(documents_url, page_token=token, since="2025-09-01T00:00:00Z")
    assert changed.status_code == 400 and "page_token" in changed.json()["error"]
    for params, name in (({"since": "2025-09-01T00:00:00"}, "since"), ({"until": "soon"}, "until"),
                         ({"page_size": "0"}, "page_size"), ({"page_size": "ten"}, "page_size")):
        resp = _doc_get(documents_url, **params)
        assert resp.status_code == 400 and name in resp.json()["error"]


def test_documents_auth_and_health(documents_url):
    assert _doc_get(documents_url, token=None).status_code == 401
    wrong = _doc_get(documents_url, token="nope")
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
    health = requests.get(documents_url + "/health", timeout=5)
    assert health.json() == {"status": "ok", "system": "documents"}
    assert requests.get(documents_url + "/api/nothing", timeout=5).status_code == 404
    assert requests.post(documents_url + "/api/documents", timeout=5).status_code == 405


# --- health insurance ------------------------------------------------------------------------


def _cards_get(url: str, key: str | None = API_KEY, **params: Any) -> requests.Response:
    headers = {"X-API-Key": key} if key is not None else {}
    return requests.get(url + "/api/cards", params=params, headers=headers, timeout=10)


def _all_cards(url: str, limit: int, **params: Any) -> tuple[list[dict[str, Any]], int]:
    rows, offset = [], 0
    while True:
        body = _cards_get(url, offset=offset, limit=limit, **params).json()
        rows += body["data"]
        offset += limit
        if offset >= body["total"]:
            return rows, body["total"]


def test_card_generation(cards):
    rows, defects = cards
    assert (rows, defects) == make_cards_with_defects(SEED, 600, defect_rate=0.02)
    assert sorted(set(defects.values())) == sorted(CARD_DEFECT_KINDS) and len(defects) == 12
    assert rows == sorted(rows, key=lambda r: (r["updated_at"], r["card_no"]))
    assert len({r["card_no"] for r in rows}) == len({r["personal_id"] for r in rows}) == len(rows)
    for r in rows:
        kind = defects.get(r["card_no"])
        assert tuple(r) == CARD_FIELDS and CARD_NO_RE.fullmatch(r["card_no"]), r
        assert WINDOW_START_UTC <= r["updated_at"] <= WINDOW_END_UTC
        assert (kind == "validity_reversed") == (r["valid_to"] < r["valid_from"])
        assert (kind == "cccd_invalid") == (not _cccd_ok(r["personal_id"], r["sex"], r["birth_date"]))
        assert (kind == "commune_unknown") == (r["commune_code"] == UNKNOWN_COMMUNE)
        assert r["commune_code"] in commune_codes() | {UNKNOWN_COMMUNE}
        assert r["valid_from"] != r["valid_to"]


def test_cards_paging_and_window(cards, cards_url):
    truth = cards[0]
    rows, total = _all_cards(cards_url, limit=77)
    assert total == len(truth) and rows == [card_to_json(r) for r in truth]
    since, until = truth[50]["updated_at"], truth[300]["updated_at"]
    rows, total = _all_cards(cards_url, limit=60, updated_since=since.isoformat(),
                             updated_until=until.isoformat().replace("+00:00", "Z"))
    expected = [card_to_json(r) for r in truth if since <= r["updated_at"] < until]
    assert rows == expected and total == len(expected)
    past = _cards_get(cards_url, offset=10_000).json()
    assert past["data"] == [] and past["total"] == len(truth) and past["offset"] == 10_000


def test_cards_errors(cards_url):
    assert _cards_get(cards_url, key=None).status_code == 401
    assert _cards_get(cards_url, key="wrong").status_code == 401
    for params, name in (({"updated_since": "2025-08-01"}, "updated_since"), ({"offset": "-1"}, "offset"),
                         ({"limit": "0"}, "limit")):
        resp = _cards_get(cards_url, **params)
        assert resp.status_code == 400 and name in resp.json()["error"]
    assert requests.get(cards_url + "/health", timeout=5).json() == {"status": "ok", "system": "health_insurance"}


# --- DVCQG -----------------------------------------------------------------------------------


def _login(url: str, password: str = PASSWORD) -> requests.Response:
    return requests.post(url + "/login", json={"username": USER, "password": password}, timeout=10)


def _api(url: str, session: str, service: str, key: str | None = None, **fields: Any) -> requests.Response:
    body = {"session": session, "madonvi": "000.00.00.H42", "service": service, **fields}
    headers = {"Idempotency-Key": key} if key else {}
    return requests.post(url + "/api", json=body, headers=headers, timeout=10)


def _dossier(seq: int, **changes: str) -> dict[str, str]:
    item = {"MaHoSo": f"H37.12-250815-{seq:04d}", "MaTTHC": PROCEDURES[0].code, "TenTTHC": PROCEDURES[0].name,
            "NgayTiepNhan": "20250815093000", "NgayHenTra": "20250822093000", "NgayTra": "",
            "TrangThaiHoSo": "4", "HinhThuc": "1", "ChuHoSo": "Nguyễn Văn An"}
    return {**item, **changes}


def test_procedure_catalogue():
    rows = make_procedures(SEED)
    assert rows == make_procedures(SEED) and rows != make_procedures(SEED + 1)
    assert len(rows) == 120 and len({r["MaTTHC"] for r in rows}) == 120
    assert {p.code for p in PROCEDURES} <= {r["MaTTHC"] for r in rows}
    assert rows == sorted(rows, key=lambda r: (r["NgayCapNhat"], r["MaTTHC"]))
    for r in rows:
        assert re.fullmatch(r"[12]\.\d{6}", r["MaTTHC"]) and r["CapThucHien"] in ("Tỉnh", "Xã")
        assert r["MucDo"] in ("toan_trinh", "mot_phan") and isinstance(r["ThoiHanGiaiQuyet"], int)
        assert WINDOW_START_UTC <= parse_portal_time(r["NgayCapNhat"]) <= WINDOW_END_UTC
        assert r["KhongPhuThuocDiaGioi"] is boundary_free(r["MaTTHC"])  # by the code, whatever the seed
    assert 0.25 < sum(r["KhongPhuThuocDiaGioi"] for r in rows) / len(rows) < 0.5
    assert portal_time(datetime(2025, 8, 15, 2, 30, tzinfo=UTC)) == "20250815093000"


def test_dvcqg_login_and_session_expiry(dvcqg):
    url, state = dvcqg
    wrong = _login(url, password="bad")
    assert wrong.status_code == 401 and wrong.json()["error_code"] == "401"
    ok = _login(url).json()
    assert ok["error_code"] == "0" and ok["message"] == "OK"
    assert _api(url, ok["session"], "LayThuTuc").json()["error_code"] == "0"
    state.expire_sessions()
    expired = _api(url, ok["session"], "LayThuTuc")
    assert expired.status_code == 200 and expired.json()["error_code"] == "-1"
    assert _api(url, "made-up", "LayThuTuc").json()["error_code"] == "-1"
    assert _api(url, _login(url).json()["session"], "LayThuTuc").json()["error_code"] == "0"
    state.session_ttl_s = 0.2
    short = _login(url).json()["session"]
    time.sleep(0.3)
    assert _api(url, short, "LayThuTuc").json()["error_code"] == "-1"
    assert requests.get(url + "/health", timeout=5).json() == {"status": "ok", "system": "dvcqg"}


def test_dvcqg_lay_thu_tuc_paging(dvcqg):
    url, state = dvcqg
    session = _login(url).json()["session"]
    rows, page = [], 1
    while True:
        body = _api(url, session, "LayThuTuc", page=page, page_size=35).json()
        assert body["total"] == 120 and body["total_pages"] == 4 and body["page"] == page
        rows += body["result"]
        if page >= body["total_pages"]:
            break
        page += 1
    assert rows == state.procedures
    assert _api(url, session, "LayThuTuc", page=9, page_size=35).json()["result"] == []
    big = _api(url, session, "LayThuTuc", page_size=10_000).json()
    assert len(big["result"]) == 120 and big["total_pages"] == 1
    since = parse_portal_time(state.procedures[60]["NgayCapNhat"])
    windowed = _api(url, session, "LayThuTuc", page_size=500, since=since.isoformat()).json()
    assert windowed["result"] == [p for p in state.procedures if parse_portal_time(p["NgayCapNhat"]) >= since]
    for fields, name in (({"page": 0}, "page"), ({"page_size": "x"}, "page_size"),
                         ({"since": "2025-08-01T00:00:00"}, "since")):
        resp = _api(url, session, "LayThuTuc", **fields)
        assert resp.status_code == 400 and name in resp.json()["message"]
    unknown = _api(url, session, "XoaHoSo")
    assert unknown.status_code == 400 and "XoaHoSo" in unknown.json()["message"]


def test_dvcqg_sync_is_idempotent_with_a_key(dvcqg):
    url, state = dvcqg
    session = _login(url).json()["session"]
    batch = [_dossier(1), _dossier(2)]
    first = _api(url, session, "DongBoHoSoMC", key="batch-1", data=batch)
    assert first.status_code == 200 and first.json() == {"error_code": "0", "message": "OK", "accepted": 2}
    assert "Idempotent-Replayed" not in first.headers
    state.expire_sessions()  # a retry after re-login carries another session: still the same request
    session = _login(url).json()["session"]
    again = _api(url, session, "DongBoHoSoMC", key="batch-1", data=batch)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert state.replays == 1 and set(state.dossiers) == {batch[0]["MaHoSo"], batch[1]["MaHoSo"]}
    assert len(state.apply_counts) == 2 and all(c == 1 for c in state.apply_counts.values())
    other = _api(url, session, "DongBoHoSoMC", key="batch-1", data=[_dossier(3)])
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["message"]
    assert _dossier(3)["MaHoSo"] not in state.dossiers
    _api(url, session, "DongBoHoSoMC", data=batch)  # no key: applied again
    assert sorted(state.apply_counts.values()) == [2, 2]
    updated = _dossier(1, TrangThaiHoSo="10", NgayTra="20250820150000")
    assert _api(url, session, "DongBoHoSoMC", data=[updated]).json()["accepted"] == 1
    assert state.dossiers[updated["MaHoSo"]] == updated and len(state.apply_counts) == 3


@pytest.mark.parametrize(("change", "field"), [
    ({"NgayTiepNhan": "2025-08-15 09:30"}, "NgayTiepNhan"),
    ({"NgayHenTra": "20250231093000"}, "NgayHenTra"),
    ({"NgayTra": "2025082015"}, "NgayTra"),
    ({"TrangThaiHoSo": "11"}, "TrangThaiHoSo"),
    ({"HinhThuc": "2"}, "HinhThuc"),
    ({"MaTTHC": "9.999999"}, "MaTTHC"),
    ({"MaHoSo": ""}, "MaHoSo"),
])
def test_dvcqg_sync_rejects_bad_items(dvcqg, change, field):
    url, state = dvcqg
    session = _login(url).json()["session"]
    resp = _api(url, session, "DongBoHoSoMC", data=[_dossier(1), _dossier(2, **change)])
    assert resp.status_code == 400 and field in resp.json()["message"] and "data[1]" in resp.json()["message"]
    assert state.dossiers == {} and not state.apply_counts  # all or nothing


def test_dvcqg_batch_shape_and_progress(dvcqg):
    url, state = dvcqg
    session = _login(url).json()["session"]
    for data in ([], [_dossier(i) for i in range(201)], "x", [_dossier(1), _dossier(1)]):
        assert _api(url, session, "DongBoHoSoMC", data=data).status_code == 400
    _api(url, session, "DongBoHoSoMC", data=[_dossier(1)])
    step = {"MaHoSo": _dossier(1)["MaHoSo"], "TrangThaiHoSo": "5", "NgayXuLy": "20250816100000",
            "NoiDungXuLy": "Chuyển phòng chuyên môn thẩm định", "NguoiXuLy": "Trần Văn An"}
    assert _api(url, session, "CapNhatTienDoHoSoMC", key="p1", data=[step]).json()["accepted"] == 1
    assert _api(url, session, "CapNhatTienDoHoSoMC", key="p1", data=[step]).headers["Idempotent-Replayed"] == "true"
    assert state.progress == {step["MaHoSo"]: [step]}
    unknown = _api(url, session, "CapNhatTienDoHoSoMC", data=[{**step, "MaHoSo": "H37.99-250101-0001"}])
    assert unknown.status_code == 400 and "H37.99-250101-0001" in unknown.json()["message"]
    bad_time = _api(url, session, "CapNhatTienDoHoSoMC", data=[{**step, "NgayXuLy": "20251301000000"}])
    assert bad_time.status_code == 400 and "NgayXuLy" in bad_time.json()["message"]
    no_agency = requests.post(url + "/api", json={"session": session, "service": "LayThuTuc"}, timeout=5)
    assert no_agency.status_code == 400 and "madonvi" in no_agency.json()["message"]
    assert requests.post(url + "/api", data=b"{not json", timeout=5).status_code == 400
    assert requests.get(url + "/api", timeout=5).status_code == 405


def test_dvcqg_concurrent_retries_apply_once(dvcqg):
    url, state = dvcqg
    session = _login(url).json()["session"]
    batch = [_dossier(i) for i in range(1, 51)]
    results: list[requests.Response] = []

    def push() -> None:
        results.append(_api(url, session, "DongBoHoSoMC", key="same-batch", data=batch))

    threads = [threading.Thread(target=push) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 8
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in results) == 7 == state.replays
    assert len(state.apply_counts) == 50 and all(c == 1 for c in state.apply_counts.values())


def test_time_helpers_round_trip():
    moment = datetime(2025, 10, 31, 23, 59, 59, tzinfo=VN_TZ)
    assert parse_portal_time(portal_time(moment)) == moment
    assert parse_portal_time(portal_time(moment - timedelta(hours=7))).tzinfo == VN_TZ
    for bad in ("20250230120000", "2025081509300", 20250815093000):
        with pytest.raises(ValueError):
            parse_portal_time(bad)  # type: ignore[arg-type]
