"""Malformed and hostile payloads from a peer: a clear error naming system and operation, nothing landed.

A tiny loopback server stands in for a misbehaving peer: it serves the real
sandbox WSDL (so zeep binds the real operations) but answers calls with a
malformed JSON body or an XML entity-expansion ("billion laughs") document.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from catalog import load_catalog
from loopback import serve, soap_relay
from connectors import FatalError, open_transport
from lgsp import runner
from warehouse import Warehouse

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>&lol3;</soap:Body></soap:Envelope>"""


@pytest.fixture
def hostile_peer(sandbox_handle: Any) -> Iterator[str]:
    wsdl = requests.get(sandbox_handle.population_wsdl, timeout=5).content
    real = sandbox_handle.population_url.rstrip("/").encode()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "GET" and environ.get("QUERY_STRING") == "wsdl":
            start_response("200 OK", [("Content-Type", "text/xml")])
            return [wsdl.replace(real, f"http://127.0.0.1:{environ['SERVER_PORT']}".encode())]
        if environ["REQUEST_METHOD"] == "POST":
            start_response("200 OK", [("Content-Type", "text/xml")])
            return [BILLION_LAUGHS]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"items": [{"dossier_id": "x",']  # truncated JSON

    yield from serve(app)


def test_malformed_json_is_fatal_and_named(lgsp_env: Any, hostile_peer: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    runner.run_pipeline("tthc_dossiers")
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    landed, cursor = wh.count("core_dossier"), wh.get_cursor("tthc_dossiers")
    monkeypatch.setenv("LGSP_TTHC_URL", hostile_peer)
    with pytest.raises(FatalError, match=r"tthc /api/v1/dossiers: response is not valid JSON"):
        runner.run_pipeline("tthc_dossiers")
    assert wh.count("core_dossier") == landed and wh.get_cursor("tthc_dossiers") == cursor


def test_xml_entity_expansion_is_refused(lgsp_env: Any, hostile_peer: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGSP_POPULATION_WSDL", hostile_peer + "/?wsdl")
    catalog = load_catalog()
    spec = catalog.pipeline("population_citizens")
    transport = open_transport(catalog.systems["population"], spec.source)
    with pytest.raises(FatalError, match=r"population ListChangedCitizens: malformed or unsafe XML"):
        transport.call({"page": 1, "page_size": 10})
    with pytest.raises(FatalError, match="population ListChangedCitizens"):
        runner.run_pipeline("population_citizens")
    wh = Warehouse(lgsp_env.database_url, catalog)
    assert wh.count("core_citizen") == 0 and wh.get_cursor("population_citizens") is None


def test_oversized_response_is_fatal_and_names_the_limit(sandbox_env: Any, tmp_path: Any) -> None:
    """A peer answering more than `max_response_bytes` is cut off, not read into memory."""
    import yaml

    from connectors.source import first_request
    from tests.test_systems import small_pages_catalog

    catalog_dir = small_pages_catalog(tmp_path, page_size=500)
    systems = yaml.safe_load((catalog_dir / "systems.yaml").read_text(encoding="utf-8"))
    systems["systems"]["tthc"]["max_response_bytes"] = 4096
    (catalog_dir / "systems.yaml").write_text(yaml.safe_dump(systems, allow_unicode=True), encoding="utf-8")
    catalog = load_catalog(catalog_dir)
    spec = catalog.pipelines["tthc_dossiers"]
    transport = open_transport(catalog.systems["tthc"], spec.source)
    try:
        with pytest.raises(FatalError, match="larger than the 4096-byte limit") as caught:
            transport.call(first_request(spec.source, None))
        assert "tthc" in str(caught.value)
        assert transport.call({**first_request(spec.source, None), "page_size": 1})["items"]  # small is fine
    finally:
        transport.close()


@pytest.fixture
def relaying_peer(sandbox_handle: Any) -> Iterator[str]:
    """The real population service, relayed, with the first citizen's birth date of each page made unreadable."""
    yield from serve(soap_relay(sandbox_handle.population_wsdl, lambda content: re.sub(
        rb"<tns:birth_date>[^<]*</tns:birth_date>", b"<tns:birth_date>2020-13-45</tns:birth_date>", content, count=1)))


def test_a_soap_value_its_type_cannot_read_is_quarantined_as_sent(lgsp_env: Any, relaying_peer: str,
                                                                  sandbox_handle: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """zeep would make the unreadable date None, losing what the peer sent: the record is quarantined with
    the text itself, its field named, and every other record lands."""
    monkeypatch.setenv("LGSP_POPULATION_WSDL", relaying_peer + "/?wsdl")
    result = runner.run_pipeline("population_citizens")
    assert result["rows_pulled"] == len(sandbox_handle.data.citizens)
    assert result["rows_pulled"] == result["rows_landed"] + result["rows_quarantined"] + result["rows_superseded"]
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    with wh.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT rule, reason, payload FROM lgsp_quarantine").all()
    bad = [r for r in rows if "2020-13-45" in str(r.payload)]
    assert len(bad) == result["pages"] >= 1, rows[:3]  # the first citizen of each page
    assert all(r.reason == "birth_date: '2020-13-45' is not a valid date" for r in bad)
