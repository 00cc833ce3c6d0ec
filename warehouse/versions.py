"""What the warehouse held of some records, and when: each version's time in the table, from the lake.

A merge table keeps a record's latest version only, and a history table its versions in the source's
time (`valid_from`), not in the warehouse's. Whoever asks "what could a reader of this table have seen of
this person on 3 March" (the disclosure report, `gateway.disclosures`) needs the versions in the table's
own time. lgsp keeps what it needs to answer:

- the lake holds every row each load wrote, in a file named after its batch (a compacted file says which
  batches it holds, in which order: `warehouse.lake`);
- `lgsp_change` numbers every write that changed the dataset, in commit order, with its commit time;
- `lgsp_tombstone` names the records a write deleted;
- a quarantined record landed by `lgsp quarantine replay` keeps its payload in `lgsp_quarantine`.

`held_versions` replays those writes in commit order for the records asked about, as the merge applied
them: a version replaces the held one unless it is older by the dataset's cursor (a backfill's late row),
except a full refresh's over what an earlier run of its source system wrote (`Warehouse._update_when`'s
rule); a tombstone ends it. Each version comes back with the span it was held:
`since` its write committed, `until` the next write of that record committed (None: held now).

lgsp never deletes the lake's Parquet files (retention prunes the landed pages, compaction keeps each
batch's rows and name). What it cannot know: versions in files removed by hand, or missing from a lake
restored from an older backup (when the dataset changed before the lake's oldest partition, `known_since`
says from when the lake knows it, and each record's oldest known version is taken as held from the
beginning, `since` None, so no earlier read is missed); a deletion whose record retention pruned
(`LGSP_RETENTION_DAYS`: the version looks held until the record's next one, which can only add reads);
values a migration or a restore put in the table (they write no lake file: the table's current row is
added to the open span).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from catalog.models import DatasetSpec
from warehouse.lake import Lake, _provenance
from warehouse.store import tombstone_key, utc
from warehouse.tables import system_tables

Key = tuple[Any, ...]


@dataclass(frozen=True)
class Held:
    """One version of a record as the table held it, from `since` (None: before what the lake keeps) to
    `until` (None: held now); `batch_id` is the write that put it there."""

    key: Key
    values: dict[str, Any]
    since: datetime | None
    until: datetime | None
    batch_id: str


@dataclass
class Versions:
    """The held versions of the records asked about, oldest first per record, and how far back they are
    known: `known_since` is the first write the lake holds a file of (None: the lake holds the dataset's
    first write, so nothing is missing)."""

    held: list[Held] = field(default_factory=list)
    known_since: date | None = None


def lake_rows(lake: Lake, dataset: str, columns: Sequence[str],
              where: Callable[[pa.Table], pa.Array], keep: Collection[str] | None = None) -> pa.Table | None:
    """The rows of `dataset`'s lake files that `where` selects, given a table of `columns` (those a file
    has), whole (or their columns `keep`) and with the batch that wrote each (`_lake_batch`). Reads only the
    row groups it selects from; the files are held still meanwhile (`Lake.steady`)."""
    found: list[pa.Table] = []
    if not lake.dataset_path(dataset).is_dir():
        return None
    with lake.steady(dataset):
        for path in sorted(lake.dataset_path(dataset).glob("ingest_date=*/*.parquet")):
            parquet = pq.ParquetFile(path)
            present = [c for c in columns if c in parquet.schema_arrow.names]
            if not present:
                continue
            held = _provenance(path, parquet)
            names, ends = [b for b, _ in held], np.cumsum([rows for _, rows in held])
            offset = 0
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                mask = where(parquet.read_row_group(group, columns=present))
                if pc.any(mask).as_py():
                    picked = pc.indices_nonzero(mask)
                    kept = None if keep is None else [c for c in parquet.schema_arrow.names if c in keep]
                    table = parquet.read_row_group(group, columns=kept).take(picked).replace_schema_metadata(None)
                    written = np.searchsorted(ends, picked.to_numpy() + offset, side="right")
                    found.append(table.append_column("_lake_batch", pa.array([names[i] for i in written], pa.string())))
                offset += rows
    return pa.concat_tables(found, promote_options="default") if found else None


def _key_mask(table: pa.Table, key: Sequence[str], keys: set[Key]) -> pa.Array:
    """Which rows of `table` have one of `keys` (a key column a file lacks matches nothing)."""
    if any(k not in table.column_names for k in key):
        return pa.array([False] * table.num_rows)
    if len(key) == 1:
        return pc.fill_null(pc.is_in(table[key[0]], value_set=pa.array([k[0] for k in keys])), False)
    wanted = {tuple(k) for k in keys}
    return pa.array([tuple(r[c] for c in key) in wanted for r in table.select(list(key)).to_pylist()])


def _holding_mask(table: pa.Table, columns: Sequence[str], value: Any) -> pa.Array:
    masks = [pc.fill_null(pc.equal(table[c], value), False) for c in columns if c in table.column_names]
    if not masks:
        return pa.array([False] * table.num_rows)
    mask = masks[0]
    for more in masks[1:]:
        mask = pc.or_(mask, more)
    return mask


def held_versions(engine: sa.Engine, dataset: DatasetSpec, lake: Lake, columns: Sequence[str], value: Any,
                  current: Sequence[dict[str, Any]] = ()) -> Versions:
    """Every version, as the table held it and when, of the records of `dataset` that hold `value` in one of
    `columns` in any version (a parcel's earlier holder included); `current` are the table's rows of those
    records now (as a shared view shows them), which end the timeline where a migration or a restore changed
    them. See the module's docstring."""
    key = list(dataset.key)
    keys: set[Key] = {tuple(r[k] for k in key) for r in current}
    holding = lake_rows(lake, dataset.name, list(columns), lambda t: _holding_mask(t, columns, value))
    if holding is not None:
        keys |= {tuple(r[k] for k in key) for r in holding.select(key).to_pylist()}
    # the value is the record's key (a citizen's ID): the rows holding it are all its rows
    rows = holding if list(columns) == key else None
    return _versions(engine, dataset, lake, keys, current, rows, value)


def record_versions(engine: sa.Engine, dataset: DatasetSpec, lake: Lake, record: Key,
                    current: Sequence[dict[str, Any]] = ()) -> Versions:
    """Every version, as the table held it and when, of the one record of `dataset` whose key is `record` (its
    values in the key's order); `current` as for `held_versions`."""
    return _versions(engine, dataset, lake, {tuple(record)}, current, None, None)


def dataset_versions(engine: sa.Engine, dataset: DatasetSpec, lake: Lake,
                     current: Sequence[dict[str, Any]] = ()) -> Versions:
    """Every version, as the table held it and when, of every record of `dataset` the lake or `current` (the
    table's rows now) has: the whole dataset's timeline, for a catalogue or master data of some thousands of
    records; one pass over the lake's files."""
    return versions_of(engine, dataset, lake, None, current)


MANY = 50_000
"""More keys than this are looked up by reading the dataset's rows once, not in IN lists."""


@dataclass(frozen=True)
class KeyRange:
    """The records whose key's first column holds a value after `low` and up to `high` (None: no bound): a slice
    of a dataset replayed at once. Values compare as Python, Arrow and SQLite compare them (text: by code point,
    the order of its UTF-8 bytes); PostgreSQL is told `COLLATE "C"`, the same order, whatever the database's
    collation. So each record falls in one slice of a set of ranges, wherever it is read from."""

    low: Any = None
    high: Any = None

    def contains(self, value: Any) -> bool:
        try:
            return (self.low is None or value > self.low) and (self.high is None or value <= self.high)
        except TypeError:  # a key as JSON says it (a tombstone's), against a typed bound: as text
            return KeyRange(*(None if b is None else str(b) for b in (self.low, self.high))).contains(str(value))

    def mask(self, column: pa.ChunkedArray) -> pa.Array:
        """Which values of a lake file's key column are in the range."""
        mask = pa.array(np.ones(len(column), dtype=bool))
        if self.low is not None:
            mask = pc.and_(mask, pc.greater(column, pa.scalar(self.low, column.type)))
        if self.high is not None:
            mask = pc.and_(mask, pc.less_equal(column, pa.scalar(self.high, column.type)))
        return pc.fill_null(mask, False)

    def where(self, column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[bool]:
        """The range as a condition on the table's key column."""
        ordered = _bytewise(column, dialect)
        bounds = [ordered > self.low] if self.low is not None else []
        bounds += [ordered <= self.high] if self.high is not None else []
        return sa.and_(sa.true(), *bounds)


def _bytewise(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    return column.collate("C") if dialect == "postgresql" and isinstance(column.type, sa.String) else column


def key_ranges(conn: sa.Connection, table: sa.Table, key: Sequence[str], dialect: str, size: int) -> list[KeyRange]:
    """The table's records (a history table's current versions) cut into ranges of about `size` each by its key's
    first column (more where many share a value); the first and last ranges are open, so every record, held now or
    not, is in one. One range when the table holds no more than `size`."""
    column = table.c[key[0]]
    current = [table.c["is_current"].is_(sa.true())] if "is_current" in table.c else []
    held = conn.execute(sa.select(sa.func.count()).select_from(table).where(*current)).scalar() or 0
    if held <= size:
        return [KeyRange()]
    numbered = sa.select(column.label("k"), sa.func.row_number().over(order_by=_bytewise(column, dialect))
                         .label("n")).where(*current).subquery()
    bounds: list[Any] = []
    for row in conn.execute(sa.select(numbered.c.k).where(numbered.c.n % size == 0).order_by(numbered.c.n)):
        if not bounds or row.k != bounds[-1]:
            bounds.append(row.k)
    edges = [None, *bounds, None]
    return [KeyRange(low, high) for low, high in zip(edges, edges[1:])]


def chunks(values: Sequence[Any], size: int = 1000) -> Iterator[Sequence[Any]]:
    """`values` in slices of `size`: an IN list within what a statement may bind (PostgreSQL: 65,535)."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def written_since(engine: sa.Engine, dataset: DatasetSpec, lake: Lake, since: datetime,
                  within: KeyRange = KeyRange()) -> set[Key]:
    """The keys of the records of `dataset` (in the range `within`) a write committed after `since` wrote, deleted
    or landed from the quarantine: the only ones whose version held at `since` can differ from the table's row
    now. Reads the key columns of the lake files those writes made (a compacted file: their rows only), not the
    rest of the lake."""
    key = list(dataset.key)
    tables = system_tables(sa.MetaData())
    change, tomb, quarantine = tables["lgsp_change"], tables["lgsp_tombstone"], tables["lgsp_quarantine"]
    with engine.connect() as conn:
        batches = {r.batch_id for r in conn.execute(sa.select(change.c.batch_id, change.c.committed_at)
                                                    .where(change.c.dataset == dataset.name))
                   if r.committed_at is not None and utc(r.committed_at) > since}
        if not batches:
            return set()
        keys: set[Key] = set()
        for chunk in chunks(sorted(batches)):
            for r in conn.execute(sa.select(tomb.c.record_key).where(tomb.c.dataset == dataset.name,
                                                                      tomb.c.batch_id.in_(chunk))):
                named = json.loads(r.record_key)
                keys.add(tuple(named[k] for k in key))
        keys |= {tuple(r[k] for k in key) for r in _replayed(conn, quarantine, change, dataset, None, set(), batches)}
    return {k for k in keys if within.contains(k[0])} | _lake_keys(lake, dataset.name, key, batches, within)


def _lake_keys(lake: Lake, dataset: str, key: list[str], batches: set[str], within: KeyRange) -> set[Key]:
    """The keys in `within` of the rows `batches` wrote to the lake; files holding none of them are not read."""
    found: set[Key] = set()
    if not lake.dataset_path(dataset).is_dir():
        return found
    with lake.steady(dataset):
        for path in sorted(lake.dataset_path(dataset).glob("ingest_date=*/*.parquet")):
            parquet = pq.ParquetFile(path)
            held = _provenance(path, parquet)
            if not any(b in batches for b, _ in held) or any(k not in parquet.schema_arrow.names for k in key):
                continue
            table, offset = parquet.read(columns=key), 0
            for batch_id, rows in held:
                if batch_id in batches:
                    part = table.slice(offset, rows)
                    if within != KeyRange():
                        part = part.filter(within.mask(part[key[0]]))
                    found |= set(zip(*(part[k].to_pylist() for k in key)))
                offset += rows
    return found


def versions_of(engine: sa.Engine, dataset: DatasetSpec, lake: Lake, keys: set[Key] | None,
                current: Sequence[dict[str, Any]] = (), columns: Collection[str] | None = None,
                within: KeyRange = KeyRange()) -> Versions:
    """Every version, as the table held it and when, of the records `keys` of `dataset` (values in the key's
    order; None: every record in the range `within`, in one pass over the lake); `current` as for
    `held_versions`, in `columns` only when given (then the versions hold those, the key's and the cursor's only:
    what is compared is what is kept). `known_since` is said even when no record is asked about."""
    marks = [c for c in (dataset.cursor_field, dataset.delete_field) if c]
    keep = None if columns is None else {*dataset.key, *columns, *marks, "_lake_batch"}
    rows = None
    if keys is None:
        rows = lake_rows(lake, dataset.name, list(dataset.key), lambda t: within.mask(t[dataset.key[0]]), keep)
        keys = {tuple(r[k] for k in dataset.key) for r in current}
        if rows is not None:
            keys |= set(zip(*(rows[k].to_pylist() for k in dataset.key)))
    return _versions(engine, dataset, lake, keys, current, rows, None, keep)


def _versions(engine: sa.Engine, dataset: DatasetSpec, lake: Lake, keys: set[Key],
              current: Sequence[dict[str, Any]], rows: pa.Table | None, value: Any,
              keep: Collection[str] | None = None) -> Versions:
    """The versions of the records `keys` (and of the replayed quarantine rows holding `value`, if given);
    `rows`: their lake rows, when already read; `keep`: the columns the versions hold (None: all)."""
    key = list(dataset.key)
    tables = system_tables(sa.MetaData())
    change, tomb, batch, quarantine = (tables["lgsp_change"], tables["lgsp_tombstone"], tables["lgsp_batch"],
                                       tables["lgsp_quarantine"])
    with engine.connect() as conn:
        replayed = _replayed(conn, quarantine, change, dataset, value, keys)
        keys = keys | {tuple(r[k] for k in key) for r in replayed}
        commits = {r.batch_id: (r.change_seq, utc(r.committed_at)) for r in conn.execute(
            sa.select(change.c.batch_id, change.c.change_seq, change.c.committed_at)
            .where(change.c.dataset == dataset.name))}
        if not keys:
            return Versions(known_since=_known_since(lake, dataset.name, commits))
        writers = {r.batch_id: Writer(r.source_system, r.mode == "full_refresh") for r in conn.execute(
            sa.select(batch.c.batch_id, batch.c.source_system, batch.c.mode).where(batch.c.dataset == dataset.name))}
        deleted = sa.select(tomb.c.record_key, tomb.c.batch_id).where(tomb.c.dataset == dataset.name)
        if len(keys) > MANY:  # much of the dataset: its deletions in one pass (the keys named only if it has any)
            every = [(r.record_key, r.batch_id) for r in conn.execute(deleted)]
            tomb_keys = {tombstone_key(key, k): k for k in keys} if every else {}
            deletions = [(record_key, batch_id) for record_key, batch_id in every if record_key in tomb_keys]
        else:
            tomb_keys = {tombstone_key(key, k): k for k in keys}
            deletions = [(r.record_key, r.batch_id) for chunk in chunks(list(tomb_keys))
                         for r in conn.execute(deleted.where(tomb.c.record_key.in_(chunk)))]
    if rows is None:
        rows = lake_rows(lake, dataset.name, key, lambda t: _key_mask(t, key, keys), keep)
    if keep is not None:
        replayed = [{c: v for c, v in r.items() if c in keep} for r in replayed]
    found = (rows.to_pylist() if rows is not None else []) + replayed
    versions = Versions(held=_timeline(dataset, found, deletions, tomb_keys, commits, writers, current),
                        known_since=_known_since(lake, dataset.name, commits))
    if versions.known_since is not None:  # the lake's oldest files are gone: its oldest version may be older
        firsts = {h.key: i for i, h in reversed(list(enumerate(versions.held)))}
        for i in firsts.values():
            versions.held[i] = dataclasses.replace(versions.held[i], since=None)
    return versions


def _replayed(conn: sa.Connection, quarantine: sa.Table, change: sa.Table, dataset: DatasetSpec, value: Any,
              keys: set[Key], batches: Collection[str] = ()) -> list[dict[str, Any]]:
    """Quarantined records `lgsp quarantine replay` landed (no lake file): those of `keys`, holding `value`
    (None: keys only) or landed by one of `batches`, typed as a load types them, with the replay's batch as
    `_lake_batch`."""
    from schemas.arrow import coerce, to_arrow

    q = quarantine.c
    named = {"|".join(str(v) for v in k) for k in keys}
    select = sa.select(q.quarantine_id, q.payload, q.last_batch_id, q.record_key).where(
        q.dataset == dataset.name, q.status == "replayed",
        q.last_batch_id.in_(sa.select(change.c.batch_id).where(change.c.dataset == dataset.name)))
    if len(named) > MANY:  # much of the dataset: its replayed rows in one pass, those asked about kept
        found = [r for r in conn.execute(select) if r.record_key in named or r.last_batch_id in batches
                 or (value is not None and str(value) in r.payload)]
    else:
        asked = [q.record_key.in_(chunk) for chunk in chunks(sorted(named))]
        asked += [q.last_batch_id.in_(chunk) for chunk in chunks(sorted(batches))]
        if value is not None:
            asked.append(q.payload.contains(str(value), autoescape=True))
        found = list({r.quarantine_id: r for wanted in asked for r in conn.execute(select.where(wanted))}.values())
    if not found:
        return []
    typed = to_arrow(coerce([json.loads(r.payload) for r in found], dataset).frame, dataset).to_pylist()
    return [{**row, "_lake_batch": r.last_batch_id} for row, r in zip(typed, found)]


def _timeline(dataset: DatasetSpec, rows: list[dict[str, Any]], deletions: list[tuple[str, str]],
              tomb_keys: dict[str, Key], commits: dict[str, tuple[int, datetime | None]], writers: dict[str, Writer],
              current: Sequence[dict[str, Any]]) -> list[Held]:
    """The writes of each record replayed in commit order, as the merge applied them."""
    key, cursor = list(dataset.key), dataset.cursor_field
    events: dict[Key, dict[str, tuple[int, datetime | None, dict[str, Any] | None]]] = {}
    for row in rows:  # a batch's version of a record: its newest row (a later one on a tie)
        batch_id = row.pop("_lake_batch")
        if batch_id not in commits:  # a write that changed nothing of the dataset
            continue
        if dataset.delete_field and row.get(dataset.delete_field):  # the source's deletion: its tombstone ends it
            continue
        mine = events.setdefault(tuple(row[k] for k in key), {})
        held = mine.get(batch_id)
        if held is None or held[2] is None or not _older(row, held[2], cursor):
            mine[batch_id] = (*commits[batch_id], row)
    for record_key, batch_id in deletions:
        if batch_id in commits:
            events.setdefault(tomb_keys[record_key], {})[batch_id] = (*commits[batch_id], None)
    now = {tuple(r[k] for k in key): r for r in current}
    held_all: list[Held] = []
    for record in sorted(events, key=repr):
        timeline: list[Held] = []
        for batch_id, (_, at, row) in sorted(events[record].items(), key=lambda e: e[1][0]):
            last = timeline[-1] if timeline and timeline[-1].until is None else None
            if row is None:
                if last is not None:
                    timeline[-1] = Held(last.key, last.values, last.since, at, last.batch_id)
                continue
            if last is not None and _older(row, last.values, cursor) and not _replaces(writers, batch_id,
                                                                                      last.batch_id):
                continue  # the merge keeps the newer version it holds
            if last is not None:
                timeline[-1] = Held(last.key, last.values, last.since, at, last.batch_id)
            timeline.append(Held(record, row, at, None, batch_id))
        if record in now:  # the row as the table has it now: a migration's or a restore's values, if any
            last = timeline[-1] if timeline and timeline[-1].until is None else None
            names = [c for c in now[record] if c != "_batch_id"]
            if last is None or list(map(last.values.get, names)) != [_aware(now[record][c]) for c in names]:
                timeline.append(Held(record, {**(last.values if last else {}), **now[record]},
                                     last.since if last else None, None, now[record].get("_batch_id") or ""))
        held_all += timeline
    for record, row in now.items():
        if record not in events:
            held_all.append(Held(record, row, None, None, row.get("_batch_id") or ""))
    return held_all


def _aware(value: Any) -> Any:
    """A time as SQLite hands it back (naive: the warehouse stores UTC) said in UTC; any other value as it is.
    Aware times compare as instants, so the lake's equal the table's."""
    return value.replace(tzinfo=timezone.utc) if isinstance(value, datetime) and value.tzinfo is None else value


def same_value(first: Any, second: Any) -> bool:
    """Equal values, a time as SQLite hands it back (naive UTC) equal to the lake's (aware)."""
    return bool(_aware(first) == _aware(second))


@dataclass(frozen=True)
class Writer:
    """What the merge needs to know of a write: its source system, and whether it was a full refresh."""

    system: str
    refresh: bool


def _replaces(writers: dict[str, Writer], incoming: str, held: str) -> bool:
    """Whether a full refresh's older row replaced the version `held` wrote, as the merge decides
    (`Warehouse._update_when`): a version an earlier run of the same source system wrote, not one its own run
    wrote (a partitioned run's slices share its id: `<run>.<slice>`) nor another system's."""
    writer, before = writers.get(incoming), writers.get(held)
    if writer is None or not writer.refresh or before is None:
        return False
    return held.split(".", 1)[0] != incoming.split(".", 1)[0] and before.system == writer.system


def _older(row: dict[str, Any], than: dict[str, Any], cursor: str | None) -> bool:
    if not cursor or row.get(cursor) is None or than.get(cursor) is None:
        return False
    return bool(row[cursor] < than[cursor])


def _known_since(lake: Lake, dataset: str, commits: dict[str, tuple[int, datetime | None]]) -> date | None:
    """The lake's oldest partition's date when a write that changed the dataset committed before it (the
    older files were pruned), else None."""
    parts = lake.partitions(dataset)
    if not parts:
        return None
    oldest = date.fromisoformat(parts[0].name.split("=", 1)[1])
    first = min((at for _, at in commits.values() if at is not None), default=None)
    return oldest if first is not None and first.date() < oldest else None
