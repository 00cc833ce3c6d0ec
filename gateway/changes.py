"""The change feed: what changed in a shared dataset since an agency last asked.

An agency that keeps its own copy of a shared dataset (a department's case system
holding the province's enterprises, say) should not export the whole dataset on every
sync, and cannot rely on a column like `updated_at`: a record lgsp loads late can carry
an old `updated_at`, and a deleted record leaves no row to find. The feed instead follows
lgsp's own loads:

    GET /api/v1/datasets/{name}/changes              every current record (a snapshot), then a token
    GET /api/v1/datasets/{name}/changes?since=TOKEN  what changed since the token was issued

Each answer is `{"changes": [...], "next": TOKEN, "more": bool}`. A change is
`{"op": "upsert", "record": {...}}` (the record as it is now, protected as a records read
protects it) or `{"op": "delete", "key": {...}}` (a record gone: the source's deletion
marker, a full refresh that no longer has it, a history record closed by a deletion).
While `more` is true, ask again at once with `next`; then keep `next` and ask again later.
Applying the changes in order (upsert: insert or replace by key; delete: remove the key)
makes the agency's copy equal to the shared view as of the token.

How it never skips a change: every load (or indicator computation) that changed a dataset gets a
change number as the last write of its transaction, in commit order (`Warehouse.stamp_change`,
`lgsp_change`), and a row names the write that last changed it (`_batch_id`, in the shared view but
never shown). A token holds the
window of numbers already delivered; the next window runs from there to the highest number
committed when it begins. A window is delivered deletes first (`lgsp_tombstone`, in the
window's batches), then the current rows whose batch is in the window, in key order: a record
deleted and made again in one window ends up present. A row changed again while a window is
being read moves to a later batch and comes in the next window. Delivery is at least once
(apply idempotently); the snapshot's pages are not one instant, but together with the
windows that follow they converge on the view.

A grant that covers some rows only (`Grant.scope`) gets the upserts of its rows and no deletion (a
deleted record's key could name one beyond them); the window's last page says `"reconcile": true`
when a record may have left its rows in the window, with `scope_rows`, how many rows the grant covers
now: a copy holding that many (after the page) has nothing to drop; otherwise the reader drops what
is not among its rows' keys (`lgsp mirror` does). Its tokens name its rows: once the grant covers
other rows, a token issued before is refused (410) and the reader reads the dataset afresh.

The token is sealed (AES-256-GCM, like a records cursor): it carries no readable value and
cannot be forged. Rows written before the feed existed (no change number) come in
the snapshot only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from catalog.models import Catalog
from gateway.agencies import Grant
from gateway.records import QueryError, Reader, _timed, coerce
from warehouse.shared import has_lineage

CHANGES = sa.table("lgsp_change", sa.column("change_seq"), sa.column("batch_id"), sa.column("dataset"),
                   sa.column("rows_changed"), sa.column("tombstones_pruned_at"))
RESTORES = sa.table("lgsp_restore", sa.column("restored_at", sa.DateTime(timezone=True)), sa.column("backup"),
                    sa.column("changes_from"), sa.column("changes_to"))
TOMBSTONES = sa.table("lgsp_tombstone", sa.column("dataset"), sa.column("batch_id"), sa.column("record_key"))
FEW_PAGES = 20  # a window of at most this many pages of changed rows is read by a pass over the view, then sorted
AFRESH = "since: this token has expired; read the dataset afresh (start without since; lgsp mirror --resync)"
REFUSAL = "since: not a token this gateway issued for this dataset (use `next` as returned, or start without since)"


class TokenExpired(LookupError):
    """The token's window can no longer be delivered whole (410): the agency reads the dataset afresh."""


class NoFeed(LookupError):
    """The dataset has no change feed (404): an append log, or rows that do not name their write."""


def feed_problem(catalog: Catalog, name: str) -> str | None:
    """Why `name` has no change feed (None: it has one)."""
    dataset = catalog.datasets[name]
    if not has_lineage(dataset):
        return (f"'{name}' has no change feed: its rows do not name the write that changed them; read its "
                "records or export it")
    if dataset.write_mode == "append":
        return f"'{name}' has no change feed: it is an append log; read its records or export it"
    return None


def _rows_of(grant: Grant) -> str:
    """The rows a grant covers, as a token keeps them ("": every row)."""
    if not grant.scope:
        return ""
    return hashlib.sha256(orjson.dumps(grant.scope_dict(), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


@dataclass(frozen=True)
class Window:
    """Where a reader of the feed is: changes numbered above `lo` up to `hi` (None: not begun), in `phase`
    ("deletes", then "upserts"), after the item `after` (a tombstone's [batch, key], or a record's key)."""

    lo: int
    hi: int | None
    phase: str
    after: list[Any] | None = None

    def payload(self, name: str) -> dict[str, Any]:
        return {"t": "changes", "d": name, "lo": self.lo, "hi": self.hi, "p": self.phase, "a": self.after}


def written_in(name: str, window: Window) -> sa.Select:
    """The writes (batches, computations) of the window that changed the dataset."""
    return sa.select(CHANGES.c.batch_id).where(CHANGES.c.dataset == name, CHANGES.c.change_seq > window.lo,
                                               CHANGES.c.change_seq <= window.hi)


def _within(view: sa.Table | sa.TableClause, scope: Any) -> list[Any]:
    return [view.c[c].in_(values) for c, values in scope]


def left_scope(conn: sa.Connection, view: sa.Table | sa.TableClause, name: str, scope: Any, window: Window) -> bool:
    """Whether a record may have left the scope's rows in the window: a deletion, or a row the window changed
    that is now beyond the scope (one bit of what happened beyond it: never which record)."""
    t = TOMBSTONES.c
    deleted = sa.select(t.batch_id).where(t.dataset == name, t.batch_id.in_(written_in(name, window)))
    if conn.execute(deleted.limit(1)).first() is not None:
        return True
    beyond = sa.or_(*(sa.or_(view.c[c].is_(None), view.c[c].not_in(values)) for c, values in scope))
    moved = sa.select(view.c._batch_id).where(view.c._batch_id.in_(written_in(name, window)), beyond)
    return conn.execute(moved.limit(1)).first() is not None


def rows_within(conn: sa.Connection, view: sa.Table | sa.TableClause, scope: Any) -> int:
    """How many rows of the view lie within the scope now."""
    return int(conn.execute(sa.select(sa.func.count()).select_from(view).where(*_within(view, scope))).scalar_one())


def changed_within(conn: sa.Connection, view: sa.Table | sa.TableClause, name: str, scope: Any,
                   window: Window) -> int:
    """The rows the window's writes changed that lie within the scope now (a row changed again by a later
    write counts with that write)."""
    return int(conn.execute(sa.select(sa.func.count()).select_from(view).where(
        view.c._batch_id.in_(written_in(name, window)), *_within(view, scope))).scalar_one())


class ChangeFeed:
    """Pages of a shared dataset's changes, read from its shared view and the tombstones."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.catalog = reader.catalog

    def _window(self, name: str, token: str | None, grant: Grant) -> Window:
        if token is None:
            return Window(0, None, "upserts")
        payload = self.reader.unseal(token, REFUSAL)
        if payload.get("t") != "changes" or payload.get("d") != name or payload.get("p") not in ("deletes", "upserts"):
            raise QueryError(REFUSAL)
        if payload.get("s", "") != _rows_of(grant):  # rows it never had, now its, would never come
            raise TokenExpired(f"{AFRESH}: the grant covers other rows than when this token was issued")
        return Window(int(payload["lo"]), payload["hi"], payload["p"], payload["a"])

    def page(self, name: str, grant: Grant, token: str | None, limit: int) -> dict[str, Any]:
        """One page: {"changes": [...], "next": token, "more": bool}. QueryError for a bad token.

        A grant limited to some rows (`Grant.scope`) gets only the upserts of its rows, never a deletion (its key
        could name a record beyond the scope); the window's last page says `"reconcile": true` when a record may
        have left the reader's rows in it (deleted, or changed to outside the scope): the reader then lists the
        keys of its rows (`records?fields=<key>`) and drops the others (`lgsp mirror` does)."""
        problem = feed_problem(self.catalog, name)
        if problem:
            raise NoFeed(problem)
        window = self._window(name, token, grant)
        with _timed(self.reader.settings.query_timeout_s), self.reader.engine.connect() as conn:
            if window.lo:
                self._refuse_undone(conn, window)
            if window.hi is None:  # a new window: up to the last change committed now
                highest = int(conn.execute(sa.select(sa.func.max(CHANGES.c.change_seq))).scalar() or 0)
                if highest < window.lo:
                    raise TokenExpired(f"{AFRESH}: the warehouse's changes are numbered below this token's (was it "
                                       "restored from a backup?)")
                window = Window(window.lo, highest, window.phase if window.lo else "upserts")
            if window.lo and self._pruned_since(conn, name, window):
                raise TokenExpired(f"{AFRESH}: deletions since this token was issued have been pruned (retention, "
                                   "lgsp lake prune); a token is good for LGSP_RETENTION_DAYS")
            changes: list[dict[str, Any]] = []
            at_most = self._at_most(conn, name, window) if window.lo else None
            if at_most == 0:  # nothing of this dataset changed in the window (the usual poll between syncs)
                return self._answer(name, grant, [], Window(window.hi, None, "deletes"), False)
            if window.phase == "deletes" and grant.scope:  # a scoped reader gets no deletions: it reconciles
                window = Window(window.lo, window.hi, "upserts")
            if window.phase == "deletes":
                changes, after = self._deletes(conn, name, grant.personal, window, limit)
                if after is not None:
                    return self._answer(name, grant, changes, Window(window.lo, window.hi, "deletes", after), True)
                window = Window(window.lo, window.hi, "upserts")
                if len(changes) == limit:  # the page is full: the upserts begin on the next
                    return self._answer(name, grant, changes, window, True)
            records, after = self._upserts(conn, name, grant, window, limit - len(changes), at_most)
            reconcile = bool(after is None and grant.scope and window.lo and self._left(conn, name, grant, window))
            held = rows_within(conn, self.reader.views[name], grant.scope) if reconcile else None
        changes += records
        if after is not None:
            return self._answer(name, grant, changes, Window(window.lo, window.hi, "upserts", after), True)
        return self._answer(name, grant, changes, Window(int(window.hi or 0), None, "deletes"), False, held)

    def _answer(self, name: str, grant: Grant, changes: list[dict[str, Any]], following: Window, more: bool,
                reconcile: int | None = None) -> dict[str, Any]:
        payload = following.payload(name)
        if grant.scope:  # the token is good for these rows only
            payload["s"] = _rows_of(grant)
        answer = {"dataset": name, "changes": changes, "next": self.reader.seal(payload), "more": more}
        if reconcile is not None:  # and how many rows the grant covers now: a copy holding as many has none to drop
            answer["reconcile"], answer["scope_rows"] = True, reconcile
        return answer

    def _left(self, conn: sa.Connection, name: str, grant: Grant, window: Window) -> bool:
        return left_scope(conn, self.reader.views[name], name, grant.scope, window)

    @staticmethod
    def _refuse_undone(conn: sa.Connection, window: Window) -> None:
        """TokenExpired if the token's window holds change numbers issued for writes a restore undid (`lgsp.backup`):
        the reader's copy may hold rows the warehouse no longer has, and those numbers now name other writes."""
        top = window.hi if window.hi is not None else window.lo
        undone = conn.execute(sa.select(RESTORES.c.backup, RESTORES.c.restored_at).where(
            RESTORES.c.changes_from <= top, RESTORES.c.changes_to >= window.lo).limit(1)).first()
        if undone is not None:
            raise TokenExpired(f"{AFRESH}: the warehouse was restored from a backup ({undone.backup}, on "
                               f"{undone.restored_at:%Y-%m-%d %H:%M} UTC), undoing writes this token follows")

    @staticmethod
    def _pruned_since(conn: sa.Connection, name: str, window: Window) -> bool:
        pruned = sa.select(CHANGES.c.batch_id).where(CHANGES.c.dataset == name, CHANGES.c.change_seq > window.lo,
                                                     CHANGES.c.tombstones_pruned_at.is_not(None)).limit(1)
        return conn.execute(pruned).first() is not None

    @staticmethod
    def _at_most(conn: sa.Connection, name: str, window: Window) -> int:
        """At most this many rows of the view are in the window: the rows its writes changed (0: none changed it;
        a write that changed nothing has no number)."""
        changed = sa.select(sa.func.coalesce(sa.func.sum(CHANGES.c.rows_changed), 0)).where(
            CHANGES.c.dataset == name, CHANGES.c.change_seq > window.lo, CHANGES.c.change_seq <= window.hi)
        return int(conn.execute(changed).scalar_one())

    def _deletes(self, conn: sa.Connection, name: str, granted: frozenset[str], window: Window,
                 limit: int) -> tuple[list[dict[str, Any]], list[Any] | None]:
        """The window's deletions after `window.after`, and the position to go on from (None: all read)."""
        t = TOMBSTONES.c
        stmt = (sa.select(t.batch_id, t.record_key)
                .where(t.dataset == name, t.batch_id.in_(written_in(name, window)))
                .order_by(t.batch_id, t.record_key).limit(limit + 1))
        if window.after is not None:
            batch, key = window.after
            stmt = stmt.where(sa.or_(t.batch_id > batch, sa.and_(t.batch_id == batch, t.record_key > key)))
        rows = conn.execute(stmt).all()
        dataset = self.catalog.datasets[name]
        keys = []
        for _, record_key in rows[:limit]:
            values = orjson.loads(record_key)
            keys.append(tuple(coerce(dataset.columns[k].type, values.get(k), "tombstone") for k in dataset.key))
        shown = self.reader.finish(name, granted, keys, list(dataset.key))
        changes = [{"op": "delete", "key": key} for key in shown]
        return changes, (list(rows[limit - 1]) if len(rows) > limit else None)

    def _upserts(self, conn: sa.Connection, name: str, grant: Grant, window: Window,
                 limit: int, at_most: int | None) -> tuple[list[dict[str, Any]], list[Any] | None]:
        """The current records the window's batches changed (every current record for the snapshot) within the
        grant's rows, in key order after `window.after`, and the key to go on from (None: all read)."""
        view, shared = self.reader.views[name], self.catalog.sharing[name]
        key = list(self.catalog.datasets[name].key)
        rows_of: Any = view
        if window.lo == 0:  # the snapshot: every row but those of batches committed after the window
            later = sa.select(CHANGES.c.batch_id).where(CHANGES.c.dataset == name, CHANGES.c.change_seq > window.hi)
            stmt = sa.select(*(view.c[c] for c in shared.columns)).where(
                sa.or_(view.c._batch_id.is_(None), view.c._batch_id.not_in(later)),  # null: written before lineage
                *_within(view, grant.scope))
        else:
            stmt = sa.select(*(view.c[c] for c in shared.columns)).where(
                view.c._batch_id.in_(written_in(name, window)))
            stmt = stmt.where(*_within(view, grant.scope))
            if at_most is not None and at_most <= FEW_PAGES * limit:
                # few rows changed: one pass over the view picks them, then they are sorted; otherwise walking the
                # key's index and keeping the window's rows is cheaper per page (the matches are dense enough)
                rows_of = stmt.cte("window_rows").prefix_with("MATERIALIZED")
                stmt = sa.select(*rows_of.c)
        order = [(k, False) for k in key]
        params: dict[str, Any] = {}
        if window.after is not None:
            stmt = stmt.where(Reader.after(rows_of, order))
            dataset = self.catalog.datasets[name]
            params = {f"k{i}": coerce(dataset.columns[k].type, v, "since")
                      for i, (k, v) in enumerate(zip(key, window.after))}
        stmt = stmt.order_by(*(rows_of.c[k] for k in key)).limit(limit + 1)
        rows = conn.execute(stmt, params).all()
        records = self.reader.finish(name, grant.personal, rows[:limit], list(shared.columns))
        changes = [{"op": "upsert", "record": record} for record in records]
        if len(rows) <= limit:
            return changes, None
        last = rows[limit - 1]
        return changes, [last[shared.columns.index(k)] for k in key]
