"""The test command finds or starts a real PostgreSQL: the fallback path works too."""
from __future__ import annotations

import psycopg
import pytest

import pgserver


@pytest.mark.postgres
def test_throwaway_cluster_starts_answers_and_stops() -> None:
    if not (pgserver._pg_bin("initdb") and pgserver._pg_bin("pg_ctl")):
        pytest.skip("PostgreSQL server binaries are not installed: the fallback cannot be exercised here")
    cluster = pgserver.ThrowawayCluster()
    try:
        url = pgserver.create_database(cluster.url)
        with psycopg.connect(url) as conn:
            assert conn.execute("select current_database()").fetchone()[0] == url.rsplit("/", 1)[1]
        pgserver.drop_database(cluster.url, url)
    finally:
        cluster.stop()
    assert not pgserver._answers(cluster.url)


def test_explicit_url_that_does_not_answer_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGSP_TEST_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    with pytest.raises(pgserver.PostgresUnavailable, match="LGSP_TEST_DATABASE_URL"):
        pgserver.find_server()
