"""An agency's copy of a shared dataset, kept by the gateway's change feed (`lgsp mirror`).

    LGSP_GATEWAY_API_KEY=... lgsp mirror enterprise --gateway https://lgsp.example/ --into postgresql://...

The first run reads every current record (the feed's snapshot) into a table named after the
dataset (`--table`), created from the dataset's description (`GET /api/v1/datasets/{name}`:
columns, types, key); later runs apply only what changed since the token the last run saved. A
column the dataset gains is added; one it no longer shares is kept, no longer filled; one whose type
changed stops the run until `--resync`, which makes the emptied table again in the new types.
Each page is applied in one transaction with the token that follows it (table
`lgsp_mirror_state`), so a run killed at any point loses nothing and a rerun goes on from the last
page applied; a page applied twice changes nothing (upserts by key, deletes of what is there).

An agency whose grant covers only some rows (a commune's: `lgsp agencies grant ... --scope`) gets no
deletions from the feed (their keys could name records beyond its rows); when a page says
`reconcile`, records may have left its rows (deleted, or moved to another commune): unless the copy,
the page applied, would hold exactly as many rows as the grant covers (`scope_rows`), the mirror
lists the keys of the rows it may read (`records?fields=<key>`) and drops the rows of its copy that
are not among them, in the transaction that applies the page and saves its token.

A gateway that does not answer, or answers 5xx, is asked again (`attempts`, backoff); 429 waits
its Retry-After. A refusal (401, 403, 404, a token the gateway no longer accepts) stops the run
with the gateway's words and what to do. The API key comes from the environment only and is
never printed.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import requests
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.records import QueryError, coerce
from warehouse.store import make_engine

SQL_TYPES: dict[str, Callable[[], sa.types.TypeEngine[Any]]] = {
    "string": sa.Text, "integer": sa.BigInteger, "float": sa.Float, "boolean": sa.Boolean, "date": sa.Date,
    "timestamp": lambda: sa.DateTime(timezone=True)}


class MirrorError(RuntimeError):
    """The run stopped: the message says what the gateway said or did, and what to do. Pages applied stay."""


@dataclass
class MirrorRun:
    """What a run did."""

    dataset: str
    table: str
    pages: int = 0
    upserts: int = 0
    deletes: int = 0
    dropped: int = 0  # rows that left the agency's scope (a `reconcile` page)
    rows: int = 0
    snapshot: bool = False
    retries: int = 0
    notes: list[str] = field(default_factory=list)


class Mirror:
    """Keeps `table` in the database at `target_url` equal to the shared dataset `dataset` at `gateway`."""

    def __init__(self, gateway: str, dataset: str, target_url: str, api_key: str | None, table: str | None = None,
                 limit: int = 1000, attempts: int = 4, timeout_s: float = 120.0, backoff_s: float = 1.0,
                 gateway_name: str | None = None) -> None:
        self.base = gateway.rstrip("/")
        self.gateway_name = gateway_name or self.base  # whose feed the table follows (its saved token is for it)
        self.dataset, self.table_name = dataset, table or dataset
        self.engine = make_engine(target_url)
        self.limit, self.attempts, self.timeout_s, self.backoff_s = limit, attempts, timeout_s, backoff_s
        self.session = requests.Session()
        if api_key:
            self.session.headers["X-API-Key"] = api_key
        self.metadata = sa.MetaData()
        self.state = sa.Table("lgsp_mirror_state", self.metadata,
                              sa.Column("mirror", sa.Text, primary_key=True),  # the table's name
                              sa.Column("gateway", sa.Text, nullable=False),
                              sa.Column("dataset", sa.Text, nullable=False),
                              sa.Column("token", sa.Text),
                              sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False))
        self.key: list[str] = []
        self.types: dict[str, str] = {}
        self.table: sa.Table | None = None

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()

    # --- the gateway ----------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any], run: MirrorRun) -> dict[str, Any]:
        """GET a JSON answer, asking again after a timeout, a dropped connection, a 5xx or a 429."""
        url = f"{self.base}{path}"
        for attempt in range(1, self.attempts + 1):
            try:
                answer = self.session.get(url, params=params, timeout=self.timeout_s)
            except requests.RequestException as exc:
                problem = f"no answer ({type(exc).__name__})"
            else:
                if answer.status_code == 200:
                    try:
                        body = answer.json()
                    except ValueError:
                        raise MirrorError(f"{url} answered 200 with something that is not JSON: is --gateway the "
                                          "lgsp gateway's address?") from None
                    if not isinstance(body, dict):
                        raise MirrorError(f"{url} answered 200 with JSON that is not an object")
                    return body
                message = _message(answer)
                if answer.status_code == 429:
                    wait = min(60.0, float(answer.headers.get("Retry-After", "1") or 1))
                    run.notes.append(f"rate limited: waited {wait:g} s")
                    time.sleep(wait)
                    continue
                if answer.status_code < 500:
                    raise MirrorError(self._refusal(answer.status_code, message, "since" in params))
                problem = f"HTTP {answer.status_code}: {message}"
            if attempt < self.attempts:
                run.retries += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise MirrorError(f"the gateway at {self.base} gave no usable answer after {self.attempts} attempts "
                          f"({problem}). Nothing is lost: {run.pages} page(s) applied, their token saved; run again "
                          "to go on")

    def _refusal(self, status: int, message: str, with_token: bool) -> str:
        hint = {401: "set LGSP_GATEWAY_API_KEY to the agency's API key (lgsp agencies key AGENCY)",
                403: f"ask the data owner for a grant on {self.dataset}",
                404: f"check the dataset's name (GET {self.base}/api/v1/datasets lists them)"}.get(status, "")
        if status == 410:
            hint = "run again with --resync to read the dataset afresh"
        if status == 400 and with_token:
            hint = ("the gateway no longer accepts the saved token (its pseudonym key changed?): run again with "
                    "--resync to read the dataset afresh")
        return f"the gateway refused (HTTP {status}): {message}" + (f". What to do: {hint}" if hint else "")

    # --- the copy ---------------------------------------------------------------------------------

    def _check_columns(self, run: MirrorRun, snapshot: bool) -> None:
        """The table as it is against the dataset's description (its `schema_version` changed since the copy was
        made, `dataset.schema_changed`): a column no longer shared is kept, no longer filled (said); a column of
        another type now is refused (its values must be read again: `--resync`), unless the table is empty and a
        snapshot is to be read (after `--resync`), when it is made again in the new types."""
        assert self.table is not None
        inspector = sa.inspect(self.engine)
        if not inspector.has_table(self.table_name):
            return
        live = {c["name"]: c["type"] for c in inspector.get_columns(self.table_name)}
        gone = sorted(set(live) - set(self.types))
        if gone:
            run.notes.append(f"column(s) {', '.join(gone)} no longer shared: kept in {self.table_name}, no longer "
                             "filled")
        retyped = [f"{c.name} ({_kind_of(live[c.name])} here, {self.types[c.name]} now)" for c in self.table.columns
                   if c.name in live and _kind_of(live[c.name]) != _kind_of(c.type)]
        if not retyped:
            return
        with self.engine.connect() as conn:
            empty = conn.execute(sa.select(sa.literal(1)).select_from(sa.table(self.table_name)).limit(1)).first() \
                is None
        if not (snapshot and empty):
            raise MirrorError(f"the gateway describes {self.dataset} with columns of other types than table "
                              f"{self.table_name} holds: {'; '.join(retyped)} (its definition changed since the copy "
                              "was made). What to do: run again with --resync to read the dataset afresh (the table is "
                              "made again in the new types)")
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP TABLE "{self.table_name}"')
        run.notes.append(f"table {self.table_name} made again: {'; '.join(retyped)}")

    def _prepare(self, run: MirrorRun, snapshot: bool = False) -> None:
        """The dataset's description -> the table (created, or columns added), and the key."""
        info = self._get(f"/api/v1/datasets/{self.dataset}", {}, run)
        try:
            columns = [(c["name"], c["type"], bool(c["key"]), c.get("personal")) for c in info["schema"]]
        except (KeyError, TypeError):
            raise MirrorError(f"the gateway's description of {self.dataset} has no usable schema") from None
        self.key = [name for name, _, key, _ in columns if key]
        # a personal column comes masked or pseudonymised (text) unless the grant shows it in clear
        self.types = {name: "string" if personal else kind for name, kind, _, personal in columns}
        if not self.key or any(kind not in SQL_TYPES for kind in self.types.values()):
            raise MirrorError(f"the gateway's description of {self.dataset} has no key or an unknown column type")
        if self.table_name in self.metadata.tables:  # a second run of this mirror: described afresh
            self.metadata.remove(self.metadata.tables[self.table_name])
        self.table = sa.Table(self.table_name, self.metadata,
                              *(sa.Column(name, SQL_TYPES[kind](), primary_key=name in self.key)
                                for name, kind in self.types.items()))
        self._check_columns(run, snapshot)
        self.metadata.create_all(self.engine)
        present = {c["name"] for c in sa.inspect(self.engine).get_columns(self.table_name)}
        with self.engine.begin() as conn:
            for column in self.table.columns:
                if column.name not in present:  # the dataset gained a column: older rows have it empty
                    kind = column.type.compile(dialect=self.engine.dialect)
                    conn.exec_driver_sql(f'ALTER TABLE "{self.table_name}" ADD COLUMN "{column.name}" {kind}')
                    run.notes.append(f"column {column.name} added")

    def _token(self) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.state.c.token, self.state.c.dataset, self.state.c.gateway)
                               .where(self.state.c.mirror == self.table_name)).first()
        if row is None:
            return None
        if (row.dataset, row.gateway) != (self.dataset, self.gateway_name):
            raise MirrorError(f"table {self.table_name} mirrors {row.dataset} at {row.gateway}, not {self.dataset} "
                              f"at {self.gateway_name}: choose another --table, or --resync to replace it")
        return row.token  # type: ignore[no-any-return]

    def _typed(self, values: dict[str, Any], where: str) -> dict[str, Any]:
        try:
            return {name: coerce(self.types[name], values.get(name), f"{where}.{name}") for name in self.types}
        except QueryError as exc:
            raise MirrorError(f"the gateway's answer has a value of the wrong type ({exc}); nothing of that page "
                              "was applied") from None

    def _readable_keys(self, run: MirrorRun) -> set[tuple[Any, ...]]:
        """The keys of every record the agency may read now (its grant's rows), page by page."""
        keys: set[tuple[Any, ...]] = set()
        cursor = None
        while True:
            params = {"fields": ",".join(self.key), "limit": self.limit, **({"cursor": cursor} if cursor else {})}
            body = self._get(f"/api/v1/datasets/{self.dataset}/records", params, run)
            records = body.get("records")
            if not isinstance(records, list):
                raise MirrorError("the gateway's answer to a records read has no records; nothing was applied")
            for i, record in enumerate(records):
                if not isinstance(record, dict):
                    raise MirrorError(f"records[{i}] of the gateway's answer is not a record; nothing was applied")
                try:
                    keys.add(tuple(coerce(self.types[k], record.get(k), f"records[{i}].{k}") for k in self.key))
                except QueryError as exc:
                    raise MirrorError(f"the gateway's answer has a key of the wrong type ({exc}); nothing was "
                                      "applied") from None
            cursor = body.get("next_cursor")
            if not cursor:
                return keys

    def _must_reconcile(self, body: dict[str, Any]) -> bool:
        """A `reconcile` page whose `scope_rows` the copy would not hold once the page is applied: some row of it
        may have left the grant's rows (a copy holding as many holds every one of them, so none is stale)."""
        if body.get("reconcile") is not True:
            return False
        rows, changes = body.get("scope_rows"), body.get("changes")
        if not isinstance(rows, int) or isinstance(rows, bool) or not isinstance(changes, list):
            return True
        assert self.table is not None
        keys = {tuple(c["record"].get(k) for k in self.key) for c in changes
                if isinstance(c, dict) and c.get("op") == "upsert" and isinstance(c.get("record"), dict)}
        with self.engine.connect() as conn:
            held = int(conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one())
            key = sa.tuple_(*(self.table.c[k] for k in self.key))
            try:
                typed = [tuple(coerce(self.types[c], v, "key") for c, v in zip(self.key, k)) for k in keys]
            except QueryError:
                return True  # a malformed page: `_apply` refuses it whole
            present = sum(len(conn.execute(sa.select(*(self.table.c[k] for k in self.key)).where(
                key.in_(typed[i:i + 500]))).all()) for i in range(0, len(typed), 500))
        return held + len(keys) - present != rows

    def _apply(self, body: dict[str, Any], run: MirrorRun, keep: set[tuple[Any, ...]] | None = None) -> None:
        """One page's deletes and upserts, and the token after it, in one transaction; with `keep`, the rows whose
        key is not in it are dropped too (they left the agency's rows)."""
        changes, token = body.get("changes"), body.get("next")
        if not isinstance(changes, list) or not isinstance(token, str) or not isinstance(body.get("more"), bool):
            raise MirrorError("the gateway's answer is not a page of changes (changes, next, more); nothing of it "
                              "was applied")
        upserts, deletes = [], []
        for i, change in enumerate(changes):
            op = change.get("op") if isinstance(change, dict) else None
            if op == "upsert" and isinstance(change.get("record"), dict):
                upserts.append(self._typed(change["record"], f"changes[{i}].record"))
            elif op == "delete" and isinstance(change.get("key"), dict):
                deletes.append(tuple(self._typed(change["key"], f"changes[{i}].key")[k] for k in self.key))
            else:
                raise MirrorError(f"changes[{i}] of the gateway's answer is neither an upsert nor a delete; nothing "
                                  "of that page was applied")
            if op == "upsert" and any(upserts[-1][k] is None for k in self.key):
                raise MirrorError(f"changes[{i}] has no key value: the grant withholds a key column?")
        assert self.table is not None
        with self.engine.begin() as conn:
            key = sa.tuple_(*(self.table.c[k] for k in self.key))
            for start in range(0, len(deletes), 500):
                conn.execute(self.table.delete().where(key.in_(deletes[start:start + 500])))
            if upserts:
                insert = (postgresql.insert(self.table) if self.engine.dialect.name == "postgresql"
                          else sqlite.insert(self.table))
                updates = {c.name: insert.excluded[c.name] for c in self.table.columns if c.name not in self.key}
                conn.execute(insert.on_conflict_do_update(index_elements=self.key, set_=updates) if updates
                             else insert.on_conflict_do_nothing(index_elements=self.key), upserts)
            if keep is not None:
                keep |= {tuple(u[k] for k in self.key) for u in upserts}
                held = conn.execute(sa.select(*(self.table.c[k] for k in self.key))).all()
                gone = [tuple(row) for row in held if tuple(row) not in keep]
                for start in range(0, len(gone), 500):
                    conn.execute(self.table.delete().where(key.in_(gone[start:start + 500])))
                run.dropped += len(gone)
            saved = {"gateway": self.gateway_name, "dataset": self.dataset, "token": token,
                     "updated_at": datetime.now(timezone.utc)}
            mine = self.state.c.mirror == self.table_name
            if not conn.execute(self.state.update().where(mine).values(**saved)).rowcount:
                conn.execute(self.state.insert().values(mirror=self.table_name, **saved))
        run.pages, run.upserts, run.deletes = run.pages + 1, run.upserts + len(upserts), run.deletes + len(deletes)

    def resync(self) -> None:
        """Forget the token and empty the table: the next run reads the dataset afresh."""
        self.metadata.create_all(self.engine, tables=[self.state])
        with self.engine.begin() as conn:
            conn.execute(self.state.delete().where(self.state.c.mirror == self.table_name))
            if sa.inspect(conn).has_table(self.table_name):
                conn.exec_driver_sql(f'DELETE FROM "{self.table_name}"')

    def run(self, max_pages: int | None = None) -> MirrorRun:
        """Apply pages until the feed has no more (or `max_pages`); returns what was done."""
        run = MirrorRun(self.dataset, self.table_name)
        self.metadata.create_all(self.engine, tables=[self.state])
        token = self._token()
        run.snapshot = token is None
        self._prepare(run, run.snapshot)
        while max_pages is None or run.pages < max_pages:
            params = {"limit": self.limit, **({"since": token} if token else {})}
            body = self._get(f"/api/v1/datasets/{self.dataset}/changes", params, run)
            self._apply(body, run, self._readable_keys(run) if self._must_reconcile(body) else None)
            token = body["next"]
            if not body["more"]:
                break
        assert self.table is not None
        with self.engine.connect() as conn:
            run.rows = int(conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one())
        return run


def _kind_of(sql_type: sa.types.TypeEngine[Any]) -> str:
    """A column type as the Python values it holds (`int`, `str`...): a reflected type and a declared one compare
    equal when they hold the same values, whatever the database calls them."""
    try:
        return sql_type.python_type.__name__
    except NotImplementedError:
        return type(sql_type).__name__


def _message(answer: requests.Response) -> str:
    try:
        return str(answer.json()["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return (answer.text or answer.reason or "")[:200]
