"""The standard connector suite, parametrised over every system and pull pipeline in the catalog.

Every test talks over loopback to the real sandbox services (zeep on real
WSDLs, requests on real HTTP and mutual TLS); the sandbox's data is the
ground truth the pulled records and the warehouse are compared against.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from catalog import load_catalog
from catalog.loader import CATALOG_DIR
from sandbox.dvcqg_rest import parse_portal_time

CATALOG = load_catalog()
PULLS = sorted(p for p in CATALOG.pipelines  # every pipeline fed by a peer (not in-process reference data)
               if CATALOG.systems[CATALOG.pipelines[p].source.system].protocol != "reference")
SOURCE_KEY = {"procedure": "MaTTHC"}  # fields the pipeline renames
SOURCE_CURSOR = {"procedure": ("NgayCapNhat", parse_portal_time)}  # and the source's own form of the cursor's time


def small_pages_catalog(tmp_path: Path, page_size: int = 40, **system_overrides: Any) -> Path:
    """A copy of the catalog whose pipelines ask for small pages (many pages from small sandbox data)."""
    target = tmp_path / "catalog"
    target.mkdir(exist_ok=True)
    for source in CATALOG_DIR.glob("*.yaml"):
        (target / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    pipelines = yaml.safe_load((target / "pipelines.yaml").read_text(encoding="utf-8"))
    for spec in pipelines["pipelines"].values():
        pager = spec["source"]["paginator"]
        for field in ("page_size", "limit"):
            if field in pager:
                pager[field] = page_size
    (target / "pipelines.yaml").write_text(yaml.safe_dump(pipelines, allow_unicode=True), encoding="utf-8")
    if system_overrides:
        systems = yaml.safe_load((target / "systems.yaml").read_text(encoding="utf-8"))
        for name, override in system_overrides.items():
            systems["systems"][name].update(override)
        (target / "systems.yaml").write_text(yaml.safe_dump(systems, allow_unicode=True), encoding="utf-8")
    return target


def truth_keys(handle: Any, dataset: str) -> tuple[set[str], set[str]]:
    """(every key the source serves, the keys of its deliberately bad rows)."""
    from sandbox.data import record_key

    if dataset in SOURCE_KEY:
        return {str(r[SOURCE_KEY[dataset]]) for r in handle.data.records(dataset)}, set(handle.data.defects(dataset))
    return {record_key(dataset, r) for r in handle.data.records(dataset)}, set(handle.data.defects(dataset))


def keys_of(records: list[dict[str, Any]], key: list[str]) -> list[str]:
    """Each record's key as lgsp writes it (a composite key's values joined by "|")."""
    return ["|".join(str(r[k]) for k in key) for r in records]


def pull_all(catalog: Any, pipeline: str) -> tuple[list[dict[str, Any]], int]:
    from connectors import iter_pages, open_transport

    spec = catalog.pipelines[pipeline]
    system = catalog.systems[spec.source.system]
    transport = open_transport(system, spec.source)
    try:
        pages = list(iter_pages(system, spec.source, transport, None))
    finally:
        transport.close()
    return [r for p in pages for r in p.records], len(pages)


# --- the standard suite: every pull pipeline ---------------------------------------------------

@pytest.mark.parametrize("pipeline", PULLS)
def test_source_pages_to_the_end_and_matches_its_schema(pipeline: str, sandbox_env: Any, sandbox_handle: Any,
                                                        tmp_path: Path) -> None:
    from schemas import coerce

    catalog = load_catalog(small_pages_catalog(tmp_path))
    spec = catalog.pipelines[pipeline]
    dataset = catalog.datasets[spec.dataset]
    records, pages = pull_all(catalog, pipeline)
    everything, defects = truth_keys(sandbox_handle, spec.dataset)
    keys = keys_of(records, dataset.key)
    assert pages > 2, "small pages must take several requests"
    assert len(keys) == len(set(keys)) == len(everything), "each record exactly once"
    assert set(keys) == everything
    typed = coerce(records, dataset)  # raises SchemaError if a required column is missing
    good_positions = [i for i, k in enumerate(keys) if k not in defects]
    assert not set(typed.type_errors) & set(good_positions), "good rows must type cleanly"


@pytest.mark.parametrize("pipeline", PULLS)
def test_source_survives_transient_faults(pipeline: str, sandbox_env: Any, sandbox_handle: Any, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGSP_TIMEOUT_S", "1.5")  # a busy machine answers slowly: only hangs time out
    catalog = load_catalog(small_pages_catalog(tmp_path, page_size=15))
    system = catalog.pipelines[pipeline].source.system
    plan = sandbox_handle.faults[system]
    plan.reset(seed=5)
    plan.transient(0.2)
    plan.hang_s = 3.0
    try:
        records, _ = pull_all(catalog, pipeline)
    finally:
        plan.clear()
    key = catalog.datasets[catalog.pipelines[pipeline].dataset].key
    everything, _ = truth_keys(sandbox_handle, catalog.pipelines[pipeline].dataset)
    assert plan.injected > 0
    assert sorted(keys_of(records, key)) == sorted(everything)


@pytest.mark.parametrize("system", sorted(CATALOG.systems))  # the reference system reports itself up
def test_health_probe_reaches_and_authenticates(system: str, sandbox_env: Any) -> None:
    from connectors.health import probe

    result = probe(load_catalog().systems[system])
    assert result.ok, result
    assert result.status == "up" and result.latency_ms is not None


AUTHENTICATED = [p for p in PULLS if CATALOG.systems[CATALOG.pipelines[p].source.system].auth.secret]


@pytest.mark.parametrize("pipeline", AUTHENTICATED)
def test_wrong_secret_is_a_fatal_error_that_never_shows_the_secret(pipeline: str, sandbox_env: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors import FatalError, open_transport
    from connectors.source import first_request

    catalog = load_catalog()
    spec = catalog.pipelines[pipeline]
    system = catalog.systems[spec.source.system]
    wrong = "wrong-secret-" + "x" * 12
    monkeypatch.setenv(system.auth.secret.split(":", 1)[1], wrong)  # type: ignore[union-attr]
    transport = open_transport(system, spec.source)
    try:
        with pytest.raises(FatalError) as caught:
            transport.call(first_request(spec.source, None))
    finally:
        transport.close()
    assert system.name in str(caught.value)
    assert wrong not in str(caught.value)


def test_client_certificate_is_required(sandbox_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    url = load_catalog().systems["civil_servants"]
    from catalog.loader import resolve_endpoint

    with pytest.raises(requests.exceptions.SSLError):
        requests.get(resolve_endpoint(url) + "/api/v1/civil-servants", timeout=5,
                     verify=str(sandbox_ca(monkeypatch)))


def sandbox_ca(monkeypatch: pytest.MonkeyPatch) -> str:
    import os

    return os.environ["LGSP_CIVIL_SERVANTS_CA"]


def test_oauth_token_is_cached_and_refreshed(sandbox_env: Any, sandbox_handle: Any, tmp_path: Path) -> None:
    catalog = load_catalog(small_pages_catalog(tmp_path, page_size=20))
    sandbox_handle.land.token_ttl_s = 1.0
    before = sandbox_handle.land.tokens_issued
    try:
        from connectors import iter_pages, open_transport

        spec = catalog.pipelines["land_parcels"]
        transport = open_transport(catalog.systems["land"], spec.source)
        import time

        count = 0
        for page in iter_pages(catalog.systems["land"], spec.source, transport, None):
            count += len(page.records)
            time.sleep(0.15)  # pages outlive a 1 s token
        transport.close()
    finally:
        sandbox_handle.land.token_ttl_s = 300.0
    issued = sandbox_handle.land.tokens_issued - before
    assert count == len(sandbox_handle.data.records("land_parcel"))
    assert 2 <= issued < 15, f"{issued} tokens for 15 pages: cached, and refreshed when it expired"


def test_dvcqg_session_expiry_logs_in_again(sandbox_env: Any, sandbox_handle: Any, tmp_path: Path) -> None:
    from connectors import iter_pages, open_transport

    catalog = load_catalog(small_pages_catalog(tmp_path, page_size=20))
    spec = catalog.pipelines["dvcqg_procedures"]
    transport = open_transport(catalog.systems["dvcqg"], spec.source)
    records = []
    for page in iter_pages(catalog.systems["dvcqg"], spec.source, transport, None):
        records += page.records
        if page.number == 2:
            sandbox_handle.dvcqg.expire_sessions()
    transport.close()
    assert len({r["procedure_code"] for r in records}) == len(sandbox_handle.data.records("procedure"))
