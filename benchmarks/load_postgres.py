"""Benchmark: `lgsp.runner.load()` of large citizen batches into PostgreSQL, row path vs COPY path.

Builds a synthetic validated batch (Parquet + manifest, no sandbox), then times
`load()` three ways on a fresh database per path: the first load (all rows
inserted), a rerun (nothing changes) and a batch with 10% of the rows changed.
"row" is the executemany upsert (the path before COPY; what SQLite still uses),
"copy" is COPY into a staging table + one INSERT ... ON CONFLICT. Prints
rows/s and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/load_postgres.py --rows 100000 \\
        --admin-url postgresql://postgres@127.0.0.1:5432/test
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

from row_rules import citizens_frame  # noqa: E402  (the same synthetic citizens)


def _database(admin_url: str) -> tuple[str, sa.Engine]:
    name = f"lgsp_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}", admin


def _batch(ctx: Any, frame: pd.DataFrame) -> str:
    from lgsp import runner
    from schemas import to_arrow

    batch_id = runner.new_batch_id(ctx.pipeline.name)
    table = to_arrow(frame, ctx.dataset).replace_schema_metadata(None)
    path = ctx.lake.write_parquet(table, ctx.dataset.name, pd.Timestamp.now().date(), batch_id)
    ctx.lake.write_manifest(ctx.pipeline.name, batch_id, {
        "batch_id": batch_id, "mode": "incremental", "parquet": str(path),
        "cursor_to": frame["updated_at"].max().isoformat()})
    with ctx.warehouse.transaction() as conn:
        conn.execute(ctx.warehouse.system["lgsp_batch"].insert().values(
            batch_id=batch_id, pipeline=ctx.pipeline.name, dataset=ctx.dataset.name,
            source_system=ctx.system.name, status="validated", started_at=runner._now()))
    return batch_id


def _timed_load(ctx: Any, frame: pd.DataFrame) -> tuple[float, int]:
    from lgsp import runner

    batch_id = _batch(ctx, frame)
    started = time.perf_counter()
    changed = runner.load(ctx, batch_id)["rows_changed"]
    return time.perf_counter() - started, changed


def run_path(path: str, rows: int, admin_url: str, home: Path) -> dict[str, float]:
    from lgsp import runner
    from lgsp.settings import Settings
    from warehouse import store

    store.COPY_MIN_ROWS = 200 if path == "copy" else 10**12
    url, admin = _database(admin_url)
    try:
        settings = Settings(home=home, database_url=url, lake_root=home / f"lake-{path}")
        ctx = runner.context("population_citizens", settings=settings)
        frame = citizens_frame(rows)
        frame = frame.drop_duplicates("personal_id").reset_index(drop=True)
        changed = frame.copy()
        picked = changed.sample(frac=0.1, random_state=1).index
        changed.loc[picked, "address"] = "Thôn 2"
        changed.loc[picked, "updated_at"] = changed.loc[picked, "updated_at"] + pd.Timedelta(days=1)
        figures = {}
        for label, batch in (("first", frame), ("rerun", frame), ("10pct_changed", changed)):
            seconds, written = _timed_load(ctx, batch)
            figures[label] = round(len(batch) / seconds)
            print(f"{path:5} {label:14} {len(batch):7d} rows {seconds:7.2f} s {figures[label]:9d} rows/s "
                  f"({written} written)")
        ctx.warehouse.engine.dispose()
        return figures
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {path: run_path(path, args.rows, args.admin_url, Path(tmp)) for path in ("row", "copy")}
    print(json.dumps({"rows": args.rows, "rows_per_s": result}))


if __name__ == "__main__":
    main()
