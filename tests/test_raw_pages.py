"""A REST page's records landed as the peer sent them (`connectors.source.RawRecords`), parsed once.

Unit tests of `raw_page`, and whole runs through a loopback peer that forwards to the real
TTHC sandbox and re-encodes its answers: pretty-printed (line breaks between values),
UTF-16 (not UTF-8: the page is parsed whole, as before) and with a record that is not an
object (a clear error, nothing loaded).
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import requests
import sqlalchemy as sa

from catalog import load_catalog
from connectors import FatalError
from connectors.source import RawRecords, field_values, raw_page
from lgsp import runner
from warehouse import Lake, Warehouse

RECORDS = [{"id": "a-1", "name": "Nguyễn Văn An", "n": 1}, {"id": "a-2", "name": "Trần Thị Bình", "n": None}]


def test_raw_page_keeps_the_records_as_sent_and_parses_everything_else() -> None:
    body = json.dumps({"data": {"items": RECORDS, "next": "/p2"}, "total": 2}, ensure_ascii=False,
                      indent=2).encode()
    page = raw_page(body, "data.items")
    assert page is not None and page["total"] == 2 and page["data"]["next"] == "/p2"
    records = page["data"]["items"]
    assert isinstance(records, RawRecords) and len(records) == 2
    assert list(records) == RECORDS
    assert field_values(records, "id") == ["a-1", "a-2"] and field_values(records, "missing") == [None, None]
    assert field_values(RECORDS, "id") == ["a-1", "a-2"]  # a parsed page gives the same


@pytest.mark.parametrize("body", [
    b'{"items": [{"a": 1}, "not an object"]}',  # the caller's full parse names the bad record
    b'{"items": {"wrapped": [{"a": 1}]}}',  # a SOAP-style wrapper: the full parse unwraps it
    b'{"other": []}',  # no records field
    b'[{"a": 1}]',  # not an object
    '{"items": [{"a": "Nguyễn"}]}'.encode("utf-16"),  # not UTF-8: decoded by its declared charset
    b'{"items": [{"a": "\xff"}]}',  # invalid UTF-8
    b'\xef\xbb\xbf{"items": []}',  # a byte-order mark (orjson refuses it; requests' json() does not)
    b'{"items": [{"a": 1}],}',  # malformed
])
def test_raw_page_leaves_any_other_page_to_the_full_parse(body: bytes) -> None:
    assert raw_page(body, "items") is None


def test_a_pretty_printed_page_lands_as_one_line_and_reads_back(tmp_path: Any) -> None:
    body = json.dumps({"items": RECORDS}, ensure_ascii=False, indent=2).replace("\n", "\r\n").encode()
    records = raw_page(body, "items")["items"]  # type: ignore[index]
    lake = Lake(tmp_path)
    path = lake.write_page("p", "b1", 1, records)
    rows, line = lake.read_page(path)
    assert rows == 2 and line.count(b"\n") == 1 and line.endswith(b"\n")
    assert lake.page_records(line) == RECORDS


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def reencoding_peer(sandbox_env: Any) -> Iterator[dict[str, Any]]:
    """A peer in front of the TTHC sandbox; `peer["mode"]` says how it re-encodes each answer."""
    real = sandbox_env.env()["LGSP_TTHC_URL"].rstrip("/")
    peer: dict[str, Any] = {"mode": "indented", "pages": 0}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        headers.pop("Host", None)
        query = environ.get("QUERY_STRING")
        answer = requests.get(real + environ["PATH_INFO"] + (f"?{query}" if query else ""), headers=headers,
                              timeout=30)
        if answer.status_code != 200 or "items" not in answer.json():
            start_response(f"{answer.status_code} X", [("Content-Type", "application/json")])
            return [answer.content]
        page, peer["pages"] = answer.json(), peer["pages"] + 1
        charset = "utf-8"
        if peer["mode"] == "not_object" and page["items"]:
            page["items"][-1] = "a record that is not an object"
        text = json.dumps(page, ensure_ascii=False, indent=2 if peer["mode"] == "indented" else None)
        if peer["mode"] == "utf16":
            charset, body = "utf-16", text.encode("utf-16")
        else:
            body = text.replace("\n", "\r\n").encode()
        start_response("200 OK", [("Content-Type", f"application/json; charset={charset}")])
        return [body]

    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    peer["url"] = f"http://127.0.0.1:{server.server_port}"
    yield peer
    server.shutdown()
    server.server_close()


def _dossiers(wh: Warehouse) -> dict[str, dict[str, Any]]:
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(wh.table("core_dossier"))).mappings().all()
    return {r["dossier_id"]: {k: v for k, v in r.items() if not k.startswith("_")} for r in rows}


@pytest.mark.parametrize("mode", ["indented", "utf16"])
def test_a_run_through_an_odd_peer_lands_what_a_direct_run_lands(lgsp_env: Any, reencoding_peer: dict[str, Any],
                                                                 sandbox_handle: Any, mode: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    direct = runner.run_pipeline("tthc_dossiers")
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    expected = _dossiers(wh)
    assert direct["rows_pulled"] == len(sandbox_handle.data.dossiers) and len(expected) == direct["rows_landed"]
    with wh.engine.begin() as conn:  # the same rows again, from the odd peer, into an empty table
        conn.execute(wh.table("core_dossier").delete())
        conn.execute(wh.table("lgsp_cursor").delete())
    reencoding_peer["mode"] = mode
    monkeypatch.setenv("LGSP_TTHC_URL", reencoding_peer["url"])
    result = runner.run_pipeline("tthc_dossiers")
    assert reencoding_peer["pages"] > 1  # several pages went through the peer
    assert (result["rows_pulled"], result["rows_landed"], result["rows_quarantined"]) == \
        (direct["rows_pulled"], direct["rows_landed"], direct["rows_quarantined"])
    assert _dossiers(wh) == expected  # every value, Vietnamese text included


def test_a_record_that_is_not_an_object_fails_the_page_by_name(lgsp_env: Any, reencoding_peer: dict[str, Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    reencoding_peer["mode"] = "not_object"
    monkeypatch.setenv("LGSP_TTHC_URL", reencoding_peer["url"])
    with pytest.raises(FatalError, match=r"tthc /api/v1/dossiers: record 500 under 'items' is a str, "
                                         r"expected an object"):
        runner.run_pipeline("tthc_dossiers")
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    assert wh.count("core_dossier") == 0 and wh.get_cursor("tthc_dossiers") is None
