"""Benchmark: a full sync of N citizens from a loopback REST source into PostgreSQL, five ways.

One run, one machine, one source (`citizen_source.py`, started here), a fresh
database per contender:

    lgsp          lgsp's full sync as `lgsp run --inline` runs it: pull, land, validate (row
                  rules + Great Expectations), Parquet, PostgreSQL merge, the three steps
                  overlapping (`lgsp.runner.run_pipeline`, `lgsp.streaming`)
    lgsp_steps    the same three steps one after another, as the Airflow tasks run them,
                  each step timed (what each costs on its own)
    dlt           dlt's `rest_api` source into PostgreSQL, merge on the key, loader file
                  format csv (its fastest for PostgreSQL); dlt lives in its own virtualenv,
                  made by this script under benchmarks/.venv-dlt
    to_sql        requests + pandas.DataFrame.to_sql
    floor         stream the pages, parse (orjson), COPY into PostgreSQL, no checks
    incremental   lgsp again, after 1% of the source's records changed, once every other
                  contender ran (minutes after the full sync: the table's pages have
                  left memory, as they would between scheduled runs) and their databases
                  were dropped and the server was idle again; the goal's figure
    incremental_warm
                  the same, right after lgsp's full sync (another 1%, the table's pages
                  still in memory): what the incremental costs lgsp itself

Each contender runs in its own process; its time excludes Python start-up and imports
(every contender imports first), its peak RSS (VmHWM) includes them. lgsp's extract
runs in a forked child process: its peak RSS is reported apart
(`extract_process_peak_rss_mb`; most of it is memory shared with the parent, copy on
write). With --large N, lgsp's full sync also runs at N rows to show how its peak
memory grows.

With --trace, each lgsp incremental also reports its timeline: when each step of the run
started and ended, in which thread (`_traced`: timing wrappers around the runner's, the
warehouse's and the expectations' functions, nothing else changed), printed after the
table, with the part PostgreSQL's upsert took (from the end of the staging COPY to the end of
the merge: `upsert_ms`, and `incremental_upsert_share_of_full` among the ratios) next to the 5%
goal's budget; the incremental's figure is then that of a traced run.

Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/full_sync.py --rows 1000000 --large 10000000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DLT_VENV = HERE / ".venv-dlt"
DLT_REQUIREMENTS = ["dlt[postgres]==1.31.0"]
PAGE_SIZE = 10_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _database(admin_url: str) -> str:
    import psycopg

    name = f"lgsp_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def _drop_database(admin_url: str, url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


# --- contenders (each runs in its own process: `full_sync.py --contender NAME`) -------------------

def _lgsp_home(home: Path, source_url: str) -> Path:
    """A catalog with the benchmark source as one more REST system and pipeline."""
    catalog = home / "catalog"
    if not catalog.exists():
        shutil.copytree(ROOT / "catalog", catalog, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
        with open(catalog / "systems.yaml", "a", encoding="utf-8") as out:
            out.write(f"""
  bench_citizens:
    title: Benchmark citizen source (benchmarks/citizen_source.py)
    protocol: rest
    endpoint: {source_url}
    auth: {{type: none}}
    timeout_s: 120
""")
        with open(catalog / "pipelines.yaml", "a", encoding="utf-8") as out:
            out.write(f"""
  bench_citizens:
    title: Benchmark citizens
    source:
      system: bench_citizens
      operation: /citizens
      cursor_param: updated_since
      cursor_format: iso_z
      records_field: items
      paginator: {{type: next_link, next_field: next, size_param: page_size, page_size: {PAGE_SIZE}}}
    dataset: citizen
""")
    return catalog


def _children_peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _import_lgsp() -> None:
    """What a run imports, imported before the clock starts, as every contender does.

    lgsp imports most of these on first use (an Airflow DAG file parses without them).
    """
    import great_expectations  # noqa: F401
    import pgpq  # noqa: F401
    import pyarrow.json  # noqa: F401

    import connectors  # noqa: F401
    import lgsp.exchanges  # noqa: F401
    import lgsp.streaming  # noqa: F401
    import quality.expectations  # noqa: F401
    import quality.rules  # noqa: F401
    import schemas  # noqa: F401


TRACED = {"lgsp.runner": ["context", "begin_extract", "pull_pages", "finish_extract", "_check_chunks",
                          "_validate_chunk", "_validated", "_load_chunks", "row_hashes"],
          "lgsp.runner:LandedChunk": ["typed"],
          "warehouse.rowhash": ["warm"],
          "warehouse.store:Warehouse": ["create_all", "read_ahead", "write_chunks", "_merge", "_copy_to_stage",
                                        "_copy_into", "set_cursor"],
          "quality.expectations:BatchCheck": ["add", "outcomes", "publish"]}


def _traced(started: list[float]) -> list[tuple[str, str, float, float]]:
    """Wrap the functions in TRACED so that each call is recorded: (thread, name, start s, end s) after `started[0]`."""
    import functools
    import importlib
    import inspect
    import threading

    events: list[tuple[str, str, float, float]] = []

    def wrap(owner: Any, name: str) -> None:
        raw = inspect.getattr_static(owner, name)
        function = raw.__func__ if isinstance(raw, staticmethod) else raw

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                events.append((threading.current_thread().name, name, began - started[0],
                               time.perf_counter() - started[0]))
        setattr(owner, name, staticmethod(timed) if isinstance(raw, staticmethod) else timed)

    for where, names in TRACED.items():
        module, _, attribute = where.partition(":")
        owner = importlib.import_module(module)
        owner = getattr(owner, attribute) if attribute else owner
        for name in names:
            wrap(owner, name)
    return events


def run_lgsp(source_url: str, db_url: str, home: str, trace: bool = False) -> dict[str, Any]:
    """lgsp's sync as `lgsp run --inline` runs it: extract, validate and load overlapping (lgsp.streaming)."""
    catalog = _lgsp_home(Path(home), source_url)
    os.environ.update(LGSP_HOME=home, LGSP_CATALOG_DIR=str(catalog), LGSP_DATABASE_URL=db_url)
    _import_lgsp()
    from lgsp import runner

    clock = [0.0]
    events = _traced(clock) if trace else []
    imported_rss = _peak_rss_mb()
    started = clock[0] = time.perf_counter()
    result = runner.run_pipeline("bench_citizens")
    seconds = time.perf_counter() - started
    figures = {"seconds": seconds, "rows": result["rows_landed"], "changed": result["rows_changed"],
               "quarantined": result["rows_quarantined"], "imports_peak_rss_mb": imported_rss,
               "extract_process_peak_rss_mb": round(_children_peak_rss_mb(), 1)}
    if trace:
        figures["timeline"] = [[thread, name, round(began * 1000, 1), round(ended * 1000, 1)]
                               for thread, name, began, ended in sorted(events, key=lambda e: e[2])]
    return figures


def run_lgsp_steps(source_url: str, db_url: str, home: str) -> dict[str, Any]:
    """lgsp's three steps one after another, as the Airflow tasks run them: each step timed."""
    catalog = _lgsp_home(Path(home), source_url)
    os.environ.update(LGSP_HOME=home, LGSP_CATALOG_DIR=str(catalog), LGSP_DATABASE_URL=db_url)
    _import_lgsp()
    from lgsp import runner

    imported_rss = _peak_rss_mb()
    started = time.perf_counter()
    ctx = runner.context("bench_citizens")  # what run_pipeline does, step by step to time each
    batch_id = runner.extract(ctx)["batch_id"]
    extracted, extract_rss = time.perf_counter(), _peak_rss_mb()
    runner.validate(ctx, batch_id)
    validated, validate_rss = time.perf_counter(), _peak_rss_mb()
    result = runner.load(ctx, batch_id)
    loaded = time.perf_counter()
    return {"seconds": loaded - started, "rows": result["rows_landed"], "changed": result["rows_changed"],
            "quarantined": result["rows_quarantined"], "extract_s": extracted - started,
            "validate_s": validated - extracted, "load_s": loaded - validated, "imports_peak_rss_mb": imported_rss,
            "extract_peak_rss_mb": extract_rss, "validate_peak_rss_mb": validate_rss}


def _pages(source_url: str) -> Any:
    import orjson
    import requests

    session = requests.Session()
    url: str | None = f"{source_url}/citizens?page_size={PAGE_SIZE}"
    while url:
        body = orjson.loads(session.get(url, timeout=120).content)
        yield body["items"]
        url = body["next"]


CITIZEN_DDL = """CREATE TABLE citizen (personal_id text PRIMARY KEY, full_name text, birth_date date, sex text,
    commune_code text, address text, phone text, updated_at timestamptz)"""
FIELDS = ["personal_id", "full_name", "birth_date", "sex", "commune_code", "address", "phone", "updated_at"]


def run_floor(source_url: str, db_url: str, home: str) -> dict[str, Any]:
    import orjson  # noqa: F401  (imports are not timed)
    import psycopg
    import requests  # noqa: F401

    started = time.perf_counter()
    rows = 0
    with psycopg.connect(db_url) as conn:
        conn.execute(CITIZEN_DDL)
        with conn.cursor() as cur, cur.copy(f"COPY citizen ({', '.join(FIELDS)}) FROM STDIN") as copy:
            for items in _pages(source_url):
                for item in items:
                    copy.write_row([item.get(f) for f in FIELDS])
                rows += len(items)
    return {"seconds": time.perf_counter() - started, "rows": rows}


def run_to_sql(source_url: str, db_url: str, home: str) -> dict[str, Any]:
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    started = time.perf_counter()
    rows = 0
    for number, items in enumerate(_pages(source_url)):
        frame = pd.DataFrame(items)
        frame.to_sql("citizen", engine, if_exists="replace" if number == 0 else "append", index=False,
                     chunksize=PAGE_SIZE)
        rows += len(frame)
    return {"seconds": time.perf_counter() - started, "rows": rows}


CONTENDERS = {"lgsp": run_lgsp, "lgsp_steps": run_lgsp_steps, "incremental": run_lgsp, "floor": run_floor,
              "to_sql": run_to_sql, "incremental_traced": lambda *a: run_lgsp(*a, trace=True)}


def _contender_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    figures = CONTENDERS[args.contender](args.source, args.db, args.home)
    figures["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    print("RESULT " + json.dumps(figures), flush=True)


# --- dlt (its own virtualenv) ------------------------------------------------------------------

DLT_SCRIPT = r'''
import json, os, sys, time
import dlt
from dlt.sources.rest_api import rest_api_source
source_url, db_url, work = sys.argv[1], sys.argv[2], sys.argv[3]
if "@" in db_url and ":" not in db_url.split("://", 1)[1].split("@", 1)[0]:
    db_url = db_url.replace("@", ":unused@", 1)  # dlt insists on a password; trust auth ignores it
os.environ["DLT_DATA_DIR"] = work
os.environ["DLT_PIPELINE_DIR"] = work
os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
source = rest_api_source({
    "client": {"base_url": source_url},
    "resources": [{"name": "citizen", "primary_key": "personal_id", "write_disposition": "merge",
                   "endpoint": {"path": "citizens", "params": {"page_size": %d}, "data_selector": "items",
                                "paginator": {"type": "json_link", "next_url_path": "next"}}}],
})
pipeline = dlt.pipeline(pipeline_name="bench", destination=dlt.destinations.postgres(db_url),
                        dataset_name="bench", pipelines_dir=work)
started = time.perf_counter()
info = pipeline.run(source, loader_file_format="csv")
seconds = time.perf_counter() - started
with pipeline.sql_client() as client:
    rows = client.execute_sql("SELECT count(*) FROM citizen")[0][0]
peak = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print("RESULT " + json.dumps({"seconds": seconds, "rows": rows, "peak_rss_mb": round(peak, 1)}), flush=True)
''' % PAGE_SIZE


def _dlt_python() -> Path:
    python = DLT_VENV / "bin" / "python"
    if not python.exists():
        print(f"==> making dlt's own virtualenv at {DLT_VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(DLT_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *DLT_REQUIREMENTS], check=True)
    return python


# --- the run -------------------------------------------------------------------------------------

def _start_source(rows: int) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "citizen_source.py"), "--rows", str(rows), "--port",
                             str(port), "--page-size", str(PAGE_SIZE)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise SystemExit(f"the benchmark source did not start: {line!r}")
    return proc, f"http://127.0.0.1:{port}"


def _run(command: list[str], label: str) -> dict[str, Any]:
    print(f"==> {label}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not results:
        raise SystemExit(f"{label} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"    {results[-1][len('RESULT '):]}", flush=True)
    return json.loads(results[-1][len("RESULT "):])  # type: ignore[no-any-return]


def _contender(name: str, source: str, db: str, home: str) -> dict[str, Any]:
    return _run([sys.executable, __file__, "--contender", name, "--source", source, "--db", db, "--home", home],
                name)


def _change(source: str, fraction: float, seed: int = 1) -> int:
    import requests

    answer = requests.post(f"{source}/admin/change?fraction={fraction}&seed={seed}", timeout=600)
    return int(answer.json()["changed"])


def _settle(admin_url: str, done: list[str], kept: str, timeout_s: float = 120.0) -> None:
    """Drop the other contenders' databases and wait for the server to be idle before the incremental.

    The incremental is meant to find lgsp's table cold, as between scheduled runs, not to
    clean up after the contenders before it: right after them PostgreSQL's buffer pool is
    full of to_sql's and dlt's pages, many dirty, so each page the incremental reads first
    waits for one of theirs to be written out. Measured on 22 Nov 2026: 1.03 s and 1.16 s
    without this, 0.66 s with it (no autovacuum worker was seen in either). So: drop their
    databases (their buffers are freed), CHECKPOINT, and wait until no autovacuum worker runs
    on the database `kept` (lgsp's).
    """
    import psycopg

    started = time.perf_counter()
    for url in done:
        _drop_database(admin_url, url)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        while time.perf_counter() - started < timeout_s and conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' AND datname = %s",
                (kept.rsplit("/", 1)[1],)).fetchone()[0]:
            time.sleep(0.5)
    print(f"==> settled before the incremental: {len(done)} database(s) dropped, checkpoint, autovacuum idle "
          f"({time.perf_counter() - started:.1f} s)", flush=True)


def _round(figures: dict[str, Any]) -> dict[str, Any]:
    out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}
    if figures.get("seconds"):
        out["rows_per_s"] = round(figures["rows"] / figures["seconds"])
    return out


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    proc, source = _start_source(args.rows)
    databases: list[str] = []
    incremental = "incremental_traced" if args.trace else "incremental"
    work = Path(tempfile.mkdtemp(prefix="lgsp-bench-"))
    try:
        def db() -> str:
            databases.append(_database(args.admin_url))
            return databases[-1]

        results["floor"] = _contender("floor", source, db(), str(work / "floor"))
        lgsp_db, lgsp_home = db(), str(work / "lgsp")
        results["lgsp"] = _contender("lgsp", source, lgsp_db, lgsp_home)
        if not args.skip_warm:  # right after the full sync: its table's pages still in memory
            changed = _change(source, 0.01, seed=2)
            results["incremental_warm"] = {**_contender(incremental, source, lgsp_db, lgsp_home),
                                           "source_changed": changed}
        if not args.skip_steps:
            results["lgsp_steps"] = _contender("lgsp_steps", source, db(), str(work / "lgsp_steps"))
        if not args.skip_dlt:
            results["dlt"] = _run([str(_dlt_python()), "-c", DLT_SCRIPT, source, db(), str(work / "dlt")], "dlt")
        if not args.skip_to_sql:
            results["to_sql"] = _contender("to_sql", source, db(), str(work / "to_sql"))
        _settle(args.admin_url, [url for url in databases if url != lgsp_db], lgsp_db)
        changed = _change(source, 0.01)
        results["incremental"] = {**_contender(incremental, source, lgsp_db, lgsp_home), "source_changed": changed}
    finally:
        proc.kill()
        for url in databases:
            _drop_database(args.admin_url, url)
        shutil.rmtree(work, ignore_errors=True)
    if args.large:
        proc, source = _start_source(args.large)
        url = _database(args.admin_url)
        try:
            results["lgsp_large"] = _contender("lgsp", source, url, str(work / "large"))
        finally:
            proc.kill()
            _drop_database(args.admin_url, url)
            shutil.rmtree(work, ignore_errors=True)
    return {name: _round(figures) for name, figures in results.items()}


def _upsert_ms(timeline: list[list[Any]] | None) -> float | None:
    """From a traced incremental: the ms PostgreSQL spent merging its rows (the end of the staging COPY to
    the end of the merge; the whole merge if nothing was staged), the part of the run no lgsp code runs in."""
    if not timeline:
        return None
    ends = {step: ended for _thread, step, _began, ended in timeline}
    merges = [(began, ended) for _thread, step, began, ended in timeline if step == "_merge"]
    if not merges:
        return None
    began, ended = merges[0]
    return round(ended - ends.get("_copy_to_stage", began), 1)


def report(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    lgsp = results["lgsp"]
    figures: dict[str, Any] = {"rows": args.rows, "cpu_count": os.cpu_count(), "results": results}
    ratios = {"lgsp_rows_per_s": lgsp["rows_per_s"],
              "floor_over_lgsp_time": round(lgsp["seconds"] / results["floor"]["seconds"], 2),
              "incremental_share_of_full": round(results["incremental"]["seconds"] / lgsp["seconds"], 3)}
    if "incremental_warm" in results:
        ratios["incremental_warm_share_of_full"] = round(results["incremental_warm"]["seconds"] / lgsp["seconds"], 3)
    for name in ("incremental", "incremental_warm"):
        if (upsert := _upsert_ms(results.get(name, {}).get("timeline"))) is not None:
            results[name]["upsert_ms"] = upsert
            ratios[f"{name}_upsert_share_of_full"] = round(upsert / 1000 / lgsp["seconds"], 3)
    if "dlt" in results:
        ratios["lgsp_speedup_over_dlt"] = round(results["dlt"]["seconds"] / lgsp["seconds"], 1)
    if "to_sql" in results:
        ratios["lgsp_speedup_over_to_sql"] = round(results["to_sql"]["seconds"] / lgsp["seconds"], 1)
    if "lgsp_large" in results:
        ratios["large_rows"] = args.large
        ratios["rss_growth_large_over_base"] = round(results["lgsp_large"]["peak_rss_mb"] / lgsp["peak_rss_mb"], 3)
    goals = {"full_sync_100k_rows_per_s": ratios["lgsp_rows_per_s"] >= 100_000,
             "within_1_3x_floor": ratios["floor_over_lgsp_time"] <= 1.3,
             "incremental_le_5pct": ratios["incremental_share_of_full"] <= 0.05,
             "peak_rss_le_500mb": lgsp["peak_rss_mb"] <= 500}
    if "lgsp_speedup_over_dlt" in ratios:
        goals["ge_5x_dlt"] = ratios["lgsp_speedup_over_dlt"] >= 5
    if "rss_growth_large_over_base" in ratios:
        goals["rss_growth_le_20pct"] = ratios["rss_growth_large_over_base"] <= 1.2
    figures.update(ratios=ratios, goals=goals)
    print(f"\n{'contender':<14}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>13}")
    for name, row in results.items():
        print(f"{name:<14}{row['rows']:>12,}{row['seconds']:>10.2f}{row.get('rows_per_s', 0):>12,}"
              f"{row['peak_rss_mb']:>13.0f}")
    for name, row in results.items():
        if row.get("timeline"):
            print(f"\n{name}: timeline (ms from the run's start)")
            print(f"{'thread':<24}{'step':<18}{'start':>8}{'end':>8}{'took':>8}")
            for thread, step, began, ended in row["timeline"]:
                print(f"{thread:<24}{step:<18}{began:>8.1f}{ended:>8.1f}{ended - began:>8.1f}")
            if "upsert_ms" in row:
                print(f"PostgreSQL's upsert: {row['upsert_ms']:.0f} ms of the run's {row['seconds'] * 1000:.0f} "
                      f"(the 5% goal's budget: {lgsp['seconds'] * 50:.0f} ms)")
    print()
    for name, value in ratios.items():
        print(f"{name:<32}{value}")
    for name, met in goals.items():
        print(f"goal {name:<27}{'met' if met else 'NOT met'}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--large", type=int, default=0, help="also run lgsp at this many rows (peak memory)")
    parser.add_argument("--admin-url", default=os.environ.get("LGSP_BENCH_ADMIN_URL",
                                                              "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--skip-dlt", action="store_true")
    parser.add_argument("--skip-to-sql", action="store_true")
    parser.add_argument("--skip-steps", action="store_true", help="skip lgsp with its steps one after another")
    parser.add_argument("--skip-warm", action="store_true",
                        help="skip the incremental run right after the full sync (the table still in memory)")
    parser.add_argument("--trace", action="store_true",
                        help="the incrementals report their timeline: each step's start and end, by thread")
    parser.add_argument("--contender", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        return _contender_main(args)
    figures = report(args, benchmark(args))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
