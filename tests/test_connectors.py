"""Connectors against the real sandbox over loopback (real zeep, real WSDL, real HTTP).

In-process fakes are used only to drive paginator and retry edge cases.
"""
from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Any

import pytest

from catalog import load_catalog
from catalog.models import RetrySpec
from connectors import FatalError, RetriableError, RetriesExhausted, iter_pages, open_transport
from connectors.retry import backoff_delay, call_with_retry
from connectors.secrets import Secret, SecretNotFound, resolve_secret


@pytest.fixture
def catalog(lgsp_env: Any) -> Any:
    return load_catalog()


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Connector tests do not touch the store; one backend is enough."""
    return f"sqlite:///{tmp_path / 'w.db'}"


def _pull_all(catalog: Any, pipeline: str, since: datetime | None = None) -> list[dict[str, Any]]:
    spec = catalog.pipeline(pipeline)
    system = catalog.systems[spec.source.system]
    transport = open_transport(system, spec.source)
    try:
        return [r for page in iter_pages(system, spec.source, transport, since) for r in page.records]
    finally:
        transport.close()


def test_soap_pull_pages_through_every_citizen(catalog: Any, sandbox_handle: Any) -> None:
    records = _pull_all(catalog, "population_citizens")
    truth = sandbox_handle.data.citizens
    assert len(records) == len(truth)
    assert {r["personal_id"] for r in records} == {c["personal_id"] for c in truth}
    assert set(records[0]) >= {"personal_id", "full_name", "birth_date", "sex", "commune_code", "updated_at"}


def test_rest_pull_with_cursor_is_inclusive(catalog: Any, sandbox_handle: Any) -> None:
    truth = sandbox_handle.data.dossiers
    since = sorted(d["updated_at"] for d in truth)[len(truth) // 2]
    records = _pull_all(catalog, "tthc_dossiers", since)
    expected = {d["dossier_id"] for d in truth if d["updated_at"] >= since}
    assert {r["dossier_id"] for r in records} == expected
    assert len(records) == len(expected)


def test_transient_5xx_are_retried_until_success(catalog: Any, sandbox_handle: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("connectors.retry.time.sleep", lambda s: None)
    sandbox_handle.faults.reset(seed=3)
    sandbox_handle.faults.error_rate = 0.3
    try:
        records = _pull_all(catalog, "tthc_dossiers")
    finally:
        sandbox_handle.faults.error_rate = 0.0
    assert sandbox_handle.faults.injected > 0
    assert len({r["dossier_id"] for r in records}) == len(sandbox_handle.data.dossiers)


def test_peer_down_exhausts_retries_with_clear_message(catalog: Any, sandbox_handle: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("connectors.retry.time.sleep", lambda s: None)
    sandbox_handle.faults.error_rate = 1.0
    try:
        with pytest.raises(RetriesExhausted) as err:
            _pull_all(catalog, "tthc_dossiers")
    finally:
        sandbox_handle.faults.error_rate = 0.0
    assert "tthc /api/v1/dossiers" in str(err.value)
    assert "503" in str(err.value)


def test_wrong_api_key_is_fatal_at_once_and_not_leaked(catalog: Any, monkeypatch: pytest.MonkeyPatch,
                                                      sandbox_handle: Any) -> None:
    monkeypatch.setenv("LGSP_TTHC_API_KEY", "wrong-key-value-123")
    before = sandbox_handle.faults.requests
    with pytest.raises(FatalError) as err:
        _pull_all(catalog, "tthc_dossiers")
    assert "HTTP 401" in str(err.value) and "tthc" in str(err.value)
    assert "wrong-key-value-123" not in str(err.value)
    assert sandbox_handle.faults.requests - before <= 1  # no retries on a fatal error


def test_soap_client_fault_is_fatal(catalog: Any, sandbox_handle: Any) -> None:
    from catalog.models import SourceSpec

    system = catalog.systems["population"]
    transport = open_transport(system, SourceSpec(system="population", operation="GetCitizen"))
    with pytest.raises(FatalError, match="population GetCitizen: SOAP client fault"):
        transport.call({"personal_id": "000000000000"})
    found = transport.call({"personal_id": sandbox_handle.data.citizens[0]["personal_id"]})
    assert found["full_name"] == sandbox_handle.data.citizens[0]["full_name"]


def test_timeout_is_retriable(catalog: Any, sandbox_handle: Any) -> None:
    spec = catalog.pipeline("tthc_dossiers")
    system = catalog.systems["tthc"].model_copy(update={"timeout_s": 0.2})
    transport = open_transport(system, spec.source)
    sandbox_handle.faults.latency_s = 1.0
    try:
        with pytest.raises(RetriableError, match="timed out"):
            transport.call({"page": 1, "page_size": 10})
    finally:
        sandbox_handle.faults.latency_s = 0.0
        transport.close()


def test_unreachable_peer_is_retriable(catalog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGSP_TTHC_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    spec = catalog.pipeline("tthc_dossiers")
    transport = open_transport(catalog.systems["tthc"], spec.source)
    with pytest.raises(RetriableError, match="connection failed"):
        transport.call({"page": 1})


class _RepeatingTransport:
    """Answers every page with the same `total_pages`, but the paginator is told page 1 again."""

    def __init__(self) -> None:
        self.calls = 0

    def call(self, params: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {"items": [{"id": self.calls}], "total_pages": 5}

    def close(self) -> None:
        pass


def test_repeated_page_request_is_an_error_not_a_loop(catalog: Any) -> None:
    from catalog.models import PaginatorSpec, SourceSpec

    source = SourceSpec(system="tthc", operation="/x",
                        paginator=PaginatorSpec(type="page_number", page_size=1, first_page=1))
    transport = _RepeatingTransport()
    pages = iter_pages(catalog.systems["tthc"], source, transport, None)
    next(pages)
    import connectors.paging as paging

    original = paging.PageNumberPaginator.next
    try:
        paging.PageNumberPaginator.next = lambda self, p, r, n: dict(p)  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="same page twice"):
            list(pages)
    finally:
        paging.PageNumberPaginator.next = original  # type: ignore[method-assign]
    assert transport.calls == 1


def test_backoff_is_exponential_capped_and_jittered() -> None:
    spec = RetrySpec(attempts=6, backoff_s=0.5, max_backoff_s=4)
    rng = random.Random(1)
    delays = [[backoff_delay(a, spec, rng) for a in range(1, 7)] for _ in range(200)]
    for attempt, column in enumerate(zip(*delays), start=1):
        assert max(column) <= min(4, 0.5 * 2 ** (attempt - 1)) + 1e-9
        assert len(set(column)) > 100  # jitter: not all the same


def test_retry_after_is_honoured() -> None:
    slept: list[float] = []
    calls = iter([RetriableError("s", "op", "HTTP 429", retry_after_s=3.0), "ok"])

    def flaky() -> str:
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    assert call_with_retry(flaky, RetrySpec(backoff_s=0.01, max_backoff_s=1), "s", "op", sleep=slept.append) == "ok"
    assert slept == [3.0]


def test_secrets_resolve_from_env_and_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGSP_SOME_SECRET", "s3cr3t")
    secret = resolve_secret("env:LGSP_SOME_SECRET")
    assert isinstance(secret, Secret) and secret.reveal() == "s3cr3t"
    assert "s3cr3t" not in repr(secret) and "s3cr3t" not in f"{secret}"
    with pytest.raises(SecretNotFound, match="LGSP_MISSING"):
        resolve_secret("env:LGSP_MISSING")


def test_cursor_param_datetime_is_sent_as_iso(catalog: Any, sandbox_handle: Any) -> None:
    future = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert _pull_all(catalog, "tthc_dossiers", future) == []
    assert _pull_all(catalog, "population_citizens", future) == []
