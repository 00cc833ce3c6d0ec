"""Shared fixtures: a real PostgreSQL, the real sandbox services, an isolated LGSP_HOME."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import pgserver  # noqa: E402

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# the population system's peak hours (catalog/systems.yaml) off: a test's timing must not follow the clock
# (tests/test_peak_hours.py sets peak hours of its own)
os.environ.setdefault("LGSP_POPULATION_PEAK_HOURS", "none")


@pytest.fixture(scope="session", autouse=True)
def _default_lgsp_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests that do not pick an LGSP_HOME write under a temporary one, never into the repo's var/."""
    previous = os.environ.get("LGSP_HOME")
    os.environ["LGSP_HOME"] = str(tmp_path_factory.mktemp("lgsp-home"))
    yield
    if previous is None:
        os.environ.pop("LGSP_HOME", None)
    else:
        os.environ["LGSP_HOME"] = previous


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """An admin URL of a real PostgreSQL server (found or started); fails, never skips."""
    try:
        url, cluster = pgserver.find_server()
    except pgserver.PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield url
    if cluster is not None:
        cluster.stop()


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    url = pgserver.create_database(pg_admin_url)
    yield url
    pgserver.drop_database(pg_admin_url, url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on the embedded default (SQLite) and on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="session")
def sandbox_handle() -> Iterator[object]:
    """The real sandbox services on free loopback ports (small deterministic data)."""
    from sandbox import start_sandbox

    handle = start_sandbox(seed=7, citizens=600, dossiers=900, api_key="test-key-not-secret",
                           sizes={"civil_status_event": 300, "land_parcel": 300, "enterprise": 300,
                                  "civil_servant": 300, "document": 300, "procedure": 120,
                                  "health_insurance_card": 300})
    yield handle
    handle.stop()


@pytest.fixture
def sandbox_env(sandbox_handle: object, monkeypatch: pytest.MonkeyPatch) -> object:
    """The environment pointing the catalog at the sandbox; faults off, breakers closed. Returns the handle."""
    from connectors.limits import reset_limits

    for name, value in sandbox_handle.env().items():  # type: ignore[attr-defined]
        monkeypatch.setenv(name, value)
    sandbox_handle.faults.clear()  # type: ignore[attr-defined]
    reset_limits()  # breakers and rate limits are per process: start each test closed
    return sandbox_handle


@pytest.fixture
def lgsp_env(tmp_path: Path, sandbox_env: object, database_url: str,
             monkeypatch: pytest.MonkeyPatch) -> object:
    """An isolated LGSP_HOME wired to the sandbox and to `database_url`; returns Settings."""
    from lgsp.settings import load_settings

    monkeypatch.setenv("LGSP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LGSP_DATABASE_URL", database_url)
    return load_settings()
