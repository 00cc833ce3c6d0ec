"""The lake brought to a dataset's changed definition, as `lgsp warehouse migrate` brings its table.

A batch's Parquet file keeps the shape the definition had when it was written. After a column's
type changed, pyarrow, pandas and DuckDB can no longer read the dataset's files as one column;
after a field kept in `_extras` was declared, older files hold its values in `_extras` only.
`conform_lake` rewrites exactly those files (`Lake.conform`): each retyped column converted by the
loader's own typing (the migration's `_typed`), each newly declared field's values moved out of
`_extras` into its column. If one value does not convert, no file changes and the error counts
them per column (never showing a value). Columns no longer declared stay as they are (a reader
unifying the files sees them null where absent), as do the lineage columns.

    lgsp lake conform enterprise            # after a definition change; `lgsp warehouse migrate` runs it
    lgsp lake conform --dry-run             # which files of every dataset would be rewritten
"""
from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from catalog.models import DatasetSpec
from schemas.arrow import arrow_schema, extras_json
from warehouse.lake import Conformed, Lake
from warehouse.migrate import EXTRAS, _Problems, _typed


def _promotable(table: pa.Table, dataset: DatasetSpec) -> tuple[list[dict[str, Any] | None], set[str]]:
    """Each row's `_extras` parsed, and the declared fields some of them hold."""
    if EXTRAS not in table.column_names:
        return [], set()
    parsed = [orjson.loads(text) if text else None for text in table.column(EXTRAS).to_pylist()]
    return parsed, {name for fields in parsed if fields for name in fields if name in dataset.columns}


def rewriter(dataset: DatasetSpec, problems: _Problems) -> Any:
    """The `Lake.conform` rewrite of one file: None when it already has the declared shape."""
    declared = arrow_schema(dataset)

    def rewrite(table: pa.Table) -> pa.Table | None:
        parsed, waiting = _promotable(table, dataset)
        retyped = {f.name for f in declared
                   if f.name in table.column_names and not table.schema.field(f.name).type.equals(f.type)}
        if not waiting and not retyped:
            return None
        for field in declared:
            if field.name not in waiting | retyped:
                continue
            present = field.name in table.column_names
            values = table.column(field.name).to_pylist() if present else [None] * table.num_rows
            if field.name in waiting:
                values = [v if v is not None or p is None else p.get(field.name) for v, p in zip(values, parsed)]
            column = _typed(field, values, dataset, problems)
            table = (table.set_column(table.schema.get_field_index(field.name), field.with_nullable(True), column)
                     if present else table.append_column(field.with_nullable(True), column))
        if waiting:
            kept = [{k: v for k, v in p.items() if k not in dataset.columns} if p else None for p in parsed]
            index = table.schema.get_field_index(EXTRAS)
            table = table.set_column(index, table.schema.field(EXTRAS),
                                     pa.array([extras_json(k) if k else None for k in kept], pa.string()))
        return table

    return rewrite


def conform_lake(lake: Lake, dataset: DatasetSpec, dry_run: bool = False) -> Conformed:
    """Rewrite the dataset's lake files that differ from its definition (see the module docstring).

    Raises:
        ValueError: a value does not convert to its column's declared type; no file was changed.
    """
    problems = _Problems()

    def refusal() -> str | None:
        if not problems.counts:
            return None
        listed = "; ".join(f"{what}: {n} value(s)" for what, n in sorted(problems.counts.items()))
        return (f"some values do not fit the definition in catalog/datasets.yaml ({listed}); correct the "
                "definition, then run `lgsp lake conform` again (the files keep their old type meanwhile)")

    return lake.conform(dataset.name, rewriter(dataset, problems), refusal, dry_run=dry_run)
