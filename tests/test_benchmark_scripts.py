"""The benchmark scripts still run and print their figures (small sizes: a smoke test, not a timing)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _figures(*command: str) -> dict:
    done = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # the last line: the figures as JSON


def test_data_docs_benchmark_times_every_publish_of_each_contender() -> None:
    figures = _figures("benchmarks/data_docs.py", "--batches", "6")
    assert figures["batches"] == 6
    windows = figures["median_publish_ms"]
    assert len(windows) == 6 and all(set(row) == {"lgsp", "gx", "gx_500"} for row in windows.values())
    assert all(ms > 0 for row in windows.values() for ms in row.values())


@pytest.mark.postgres
def test_full_sync_benchmark_runs_lgsp_the_floor_and_the_incremental(pg_admin_url: str) -> None:
    figures = _figures("benchmarks/full_sync.py", "--rows", "20000", "--admin-url", pg_admin_url,
                       "--skip-dlt", "--skip-to-sql", "--skip-steps", "--trace")
    results = figures["results"]
    assert set(results) == {"floor", "lgsp", "incremental_warm", "incremental"}
    assert results["floor"]["rows"] == results["lgsp"]["rows"] == 20000
    assert results["incremental"]["rows"] == results["incremental"]["source_changed"] == 200
    assert results["incremental_warm"]["changed"] == 200
    for name in ("incremental_warm", "incremental"):  # --trace: each incremental's steps, in start order
        timeline = results[name]["timeline"]
        steps = [step for _thread, step, _began, _ended in timeline]
        assert {"pull_pages", "typed", "_validated", "_load_chunks", "write_chunks", "set_cursor"} <= set(steps)
        assert steps.index("pull_pages") < steps.index("_validated")
        assert all(0 <= began <= ended <= results[name]["seconds"] * 1000 + 1 for *_, began, ended in timeline)
        # the server's share of the merge, from the trace: inside the merge, and in the ratios
        merge = next((began, ended) for _thread, step, began, ended in timeline if step == "_merge")
        assert 0 < results[name]["upsert_ms"] <= merge[1] - merge[0] + 0.1
        assert figures["ratios"][f"{name}_upsert_share_of_full"] == round(
            results[name]["upsert_ms"] / 1000 / results["lgsp"]["seconds"], 3)
    assert "timeline" not in results["lgsp"]
    assert set(figures["goals"]) >= {"within_1_3x_floor", "incremental_le_5pct", "peak_rss_le_500mb"}


def test_the_benchmark_source_serves_each_page_as_orjson_renders_its_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """The source joins records rendered once (at start-up, or when they change); the bytes must not differ
    from rendering the page's records as dicts with orjson, before and after a change."""
    import orjson

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from citizen_source import Citizens

    citizens = Citizens(3000)

    def rendered(start: int, size: int) -> bytes:  # what the source served before it kept rendered records
        stop = min(start + size, len(citizens))
        return orjson.dumps({"items": [{
            "personal_id": str(citizens.personal_id[i]), "full_name": str(citizens.full_name[i]),
            "birth_date": str(citizens.birth_date[i]), "sex": "female" if citizens.female[i] else "male",
            "commune_code": str(citizens.commune_code[i]), "address": str(citizens.address[i]),
            "phone": str(citizens.phone[i]), "updated_at": f"{citizens.updated_at[i]}Z"}
            for i in range(start, stop)], "next": "http://x/citizens?after=1"})

    assert citizens.body(citizens.page(0, 1000), "http://x/citizens?after=1") == rendered(0, 1000)
    before = citizens.body(citizens.page(0, 3000), None)
    assert citizens.change(0.01, seed=3) == 30
    changed = citizens.page(citizens.first_after("2026-01-01T00:00:00Z"), 1000)
    assert len(changed) == 30 and all(b"T\xe1\xbb\x95 d\xc3\xa2n ph\xe1\xbb\x91" in record for record in changed)
    assert citizens.body(citizens.page(0, 3000), "http://x/citizens?after=1") == rendered(0, 3000)
    assert citizens.body(citizens.page(0, 3000), None) != before


def test_soap_pull_benchmark_pulls_every_citizen_both_ways() -> None:
    figures = _figures("benchmarks/soap_pull.py", "--citizens", "600", "--rounds", "1")
    assert set(figures["results"]) == {"one_pass", "zeep"}
    assert {r["rows"] for r in figures["results"].values()} == {600}
    assert all(r["best_s"] > 0 and r["median_client_cpu_s"] > 0 for r in figures["results"].values())
    assert figures["ratios"]["zeep_over_one_pass_client_cpu"] > 0


def test_lookup_benchmark_times_each_scenario_against_a_read_of_the_copy() -> None:
    figures = _figures("benchmarks/lookup.py", "--sqlite", "--citizens", "300", "--lookups", "20")
    scenarios = figures["scenarios"]
    assert list(scenarios) == ["copy_read", "live", "cached", "source_down", "breaker_open"]
    assert all(scenarios[name]["requests"] == 20 for name in ("copy_read", "live", "cached", "breaker_open"))
    assert scenarios["source_down"]["requests"] >= 1  # tried the source until the breaker opened
    assert all(0 < s["p50_ms"] <= s["p95_ms"] <= s["max_ms"] for s in scenarios.values())
    assert figures["p50_over_copy_read"]["copy_read"] == 1.0


def test_changes_benchmark_follows_the_feed_and_counts_every_change() -> None:
    figures = _figures("benchmarks/changes.py", "--sqlite", "--rows", "3000", "--limit", "500")
    scenarios = figures["scenarios"]
    assert list(scenarios) == ["export_full", "feed_snapshot", "feed_changes", "export_again", "feed_few", "feed_idle"]
    assert scenarios["export_full"]["records"] == scenarios["feed_snapshot"]["records"] == 3000
    assert scenarios["feed_snapshot"]["requests"] == 6
    assert scenarios["feed_changes"]["records"] == figures["sync_changed"] == figures["source_changed"] == 30
    assert scenarios["feed_few"]["records"] == figures["sync_changed_few"] == 3
    assert scenarios["feed_idle"]["records"] == 0 and scenarios["feed_idle"]["requests"] == 1


def test_webhooks_benchmark_tells_every_endpoint_once_per_dispatch() -> None:
    figures = _figures("benchmarks/webhooks.py", "--sqlite", "--webhooks", "12", "--slow-s", "0.3", "--backlog", "3")
    got = {r["scenario"]: r for r in figures["results"]}
    assert [r["scenario"] for r in figures["results"]] == ["all_told", "idle", "one_slow", "backlog"]
    assert got["all_told"]["notifications"] == got["all_told"]["received"] == 11  # the slow endpoint sits out
    assert got["idle"]["notifications"] == got["idle"]["received"] == 0
    assert got["one_slow"]["received"] == 12 and got["one_slow"]["slowest_ms"] >= 300
    assert got["backlog"]["received"] == 11 and got["backlog"]["outcomes"] == {"delivered": 11}


def test_migrate_benchmark_moves_every_value_and_changes_nothing_for_a_write_mode() -> None:
    figures = _figures("benchmarks/migrate.py", "--sqlite", "--rows", "3000")
    assert figures["plan_steps"] == [
        "column phone: 3000 row(s) hold its value in _extras (loaded before it was declared): moved into the column"]
    assert figures["promote"]["rows_changed"] == 3000 and figures["to_history"]["rows_changed"] == 0
    assert figures["sql_rewrite_seconds"] > 0 and figures["promote"]["rows_per_s"] > 0


def test_references_benchmark_finds_the_citizens_of_the_left_out_commune() -> None:
    figures = _figures("benchmarks/references.py", "--sqlite", "--rows", "2600", "--repeat", "2")
    assert figures["orphans"] == 21  # communes[i % 129] == communes[0] for i = 0, 129, ..., 2580
    assert all(figures[step]["median_s"] > 0 for step in ("scan", "reference", "group_check", "scorecard", "profile"))
    assert 0 <= figures["breaking_groups"] < figures["groups"] <= 2600


@pytest.mark.parametrize("slice_", [None, 97])
def test_snapshot_indicator_benchmark_counts_every_record_once_at_every_periods_end(slice_: int | None) -> None:
    """With `--slice 97` the 500 records are replayed six key ranges at a time: the same cells."""
    sliced = [] if slice_ is None else ["--slice", str(slice_)]
    figures = _figures("benchmarks/snapshot_indicator.py", "--rows", "500", "--versions", "3", "--repeat", "1", *sliced)
    assert figures["slice"] == (slice_ or 200_000)
    [run] = figures["runs"]  # every month's count, and every cell against the whole replay: checked in the script
    assert run["lake_rows"] == 500 + 3 * 50 and run["versions"] >= run["lake_rows"]
    assert run["replayed_month_ended"] == 2 * 50, "this month's write: its 50 records' version then and now"
    assert all(run[step]["median_s"] > 0 for step in ("replay", "first", "daily", "month_ended", "recount"))
    assert run["mart_rows"] > 0


def test_scoped_reads_benchmark_reads_exactly_the_communes_rows_each_way() -> None:
    figures = _figures("benchmarks/scoped_reads.py", "--sqlite", "--rows", "2600", "--repeat", "2")
    assert figures["commune_rows"] == 20  # communes[i % 129] == communes[64] for i = 64, 193, ..., 2515
    assert all(figures[read]["median_s"] > 0 for read in ("unscoped", "scoped", "filtered", "scoped_indexed"))
    assert figures["load_moved"]["rows"] == 26 and figures["load_moved"]["with_index"] > 0


def test_disclosures_benchmark_finds_every_read_that_named_the_person() -> None:
    figures = _figures("benchmarks/disclosures.py", "--sqlite", "--rows", "20000", "--repeat", "2",
                       "--lake-rows", "100000", "--lake-batches", "20", "--held-rows", "30000",
                       "--quarantine-rows", "3000")
    assert figures["held_found"] == [2, 2] and figures["held"]["median_s"] > 0, "the events and rows naming them"
    assert figures["named"] >= 2 and figures["may_have_groups"] > 0  # rows 0 and 10,000 look the person up
    assert figures["lake_versions"] == 2, "the full sync's file and the second small batch hold the person"
    assert figures["report_lake"]["median_s"] > 0 and figures["lake_scan"]["median_s"] > 0
    assert figures["report"]["median_s"] > 0 and figures["scan"]["median_s"] > 0
    assert figures["usage_groups"] == 400 and figures["usage"]["median_s"] > 0  # 200 agencies x 2 datasets
    assert figures["usage_day"]["median_s"] > 0 and figures["unusual"]["median_s"] > 0


def test_backup_benchmark_backs_up_and_restores_every_row() -> None:
    figures = _figures("benchmarks/backup.py", "--sqlite", "--rows", "20000")
    assert figures["rows"] == 20000 and figures["store_bytes"] > 0 and figures["backup_bytes"] > figures["store_bytes"]
    for step in ("floor_store", "floor_lake", "create", "verify", "floor_restore", "restore"):
        assert figures[step] > 0, step
    assert figures["create_x_floor"] is not None and figures["create_x_floor"] > 0
    assert figures["again_files_linked"] == 1 and figures["again_bytes_copied"] < figures["backup_bytes"]
    assert figures["restore_dataset_written"] == 200 and figures["restore_dataset"] > 0  # 1% of the citizens
    assert figures["restore_commune_written"] == 20000 // 129 + 1 and figures["restore_keys_written"] == 1000


def test_metrics_benchmark_sums_both_processes_counts_and_times_each_scrape() -> None:
    figures = _figures("benchmarks/metrics.py", "--sqlite", "--rows", "2000", "--repeat", "2", "--calls", "500",
                       "--batches", "3000")
    files, memory = figures["per_request"]["files"], figures["per_request"]["memory"]
    assert files["requests_summed"] == 1000 and files["worker_files"] == 4  # two processes' files, summed
    assert memory["requests_summed"] == 500 and files["us_per_request"] > 0 and memory["us_per_request"] > 0
    assert figures["samples"] > 100 and figures["batches"] == 3000
    assert all(figures["per_scrape"][step]["median_s"] > 0 for step in ("scan", "status", "scrape", "kept"))


def test_gateway_reload_benchmark_reloads_under_load_and_counts_what_clients_saw() -> None:
    figures = _figures("benchmarks/gateway_reload.py", "--sqlite", "--citizens", "300", "--reloads", "2",
                       "--clients", "4", "--pause", "0.5")
    assert figures["reloads"] == 2 and figures["reloads_incomplete"] == 0
    assert 0 < figures["reload_s"]["mean"] <= figures["reload_s"]["max"]
    for run in ("connection_per_request", "pooled"):
        assert figures[run]["requests"] > 20 and figures[run]["errors"] == sum(figures[run]["error_kinds"].values())


def test_sandbox_gc_benchmark_times_a_page_with_spynes_collection_and_without() -> None:
    figures = _figures("benchmarks/sandbox_gc.py", "--heap", "10000", "--requests", "1", "--gap", "0")
    assert figures["heap"] == 10000 and figures["collect_ms"] > 0
    assert set(figures["results"]) == {"spyne_default", "lgsp"}
    assert all(row["median_ms"] > 0 for row in figures["results"].values())
