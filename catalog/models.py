"""Typed models of the declarative catalog (systems, datasets, pipelines, indicators).

The YAML files next to this module are validated against these models on load;
`catalog.loader.load_catalog` turns any validation error into a `CatalogError`
that names the file and the offending field.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
Duration = Annotated[float, BeforeValidator(lambda value: duration_s(value))]
"""Seconds, given as a number or as "90m", "3h", "2d", "1w" (`duration_s`)."""


class Strict(BaseModel):
    """Base: unknown fields are an error, so a typo in YAML is caught."""

    model_config = ConfigDict(extra="forbid", frozen=True)


SECRET_REF = re.compile(r"^(env|conn):[A-Za-z_][A-Za-z0-9_]*$")



class AuthSpec(Strict):
    """How lgsp authenticates to a system (see connectors.auth.AUTH_METHODS).

    `secret` is a reference, never a value: `env:VAR_NAME` or `conn:CONN_ID`
    (an Airflow Connection; its password is used). `username`, `client_id`,
    `cert`, `key` and `ca` may use `${VAR}` (expanded when a connection is
    opened); they are identifiers and file paths, not secrets.

    Examples:
        {type: api_key, header: X-API-Key, secret: env:LGSP_TTHC_API_KEY}
        {type: oauth2_client_credentials, token_url: /oauth/token, client_id: ${LGSP_LAND_CLIENT_ID},
         secret: env:LGSP_LAND_CLIENT_SECRET}
        {type: session_login, login_path: /login, username: ${LGSP_DVCQG_USER}, secret: env:LGSP_DVCQG_PASSWORD}
        {type: wsse_username, username: ${LGSP_CIVIL_STATUS_USER}, secret: env:LGSP_CIVIL_STATUS_PASSWORD}
        {type: mtls, cert: ${LGSP_CIVIL_SERVANTS_CERT}, key: ${LGSP_CIVIL_SERVANTS_KEY}, ca: ${LGSP_CIVIL_SERVANTS_CA}}
    """

    type: Identifier = "none"  # lgsp's own methods, or an installed package's (lgsp.plugins): `lgsp catalog` checks
    header: str | None = None
    username: str | None = None
    secret: str | None = None
    client_id: str | None = None
    token_url: str | None = None
    scope: str | None = None
    login_path: str | None = None
    session_field: str = "session"
    digest: bool = False
    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    @field_validator("secret")
    @classmethod
    def _secret_is_reference(cls, value: str | None) -> str | None:
        if value is not None and not SECRET_REF.match(value):
            raise ValueError("must be a reference 'env:VAR' or 'conn:CONN_ID', never the secret itself")
        return value

    @model_validator(mode="after")
    def _complete(self) -> "AuthSpec":
        needs = {"api_key": ("header", "secret"), "bearer": ("secret",), "basic": ("username", "secret"),
                 "oauth2_client_credentials": ("token_url", "client_id", "secret"),
                 "session_login": ("login_path", "username", "secret"),
                 "wsse_username": ("username", "secret"), "mtls": ("cert", "key")}
        missing = [f for f in needs.get(self.type, ()) if not getattr(self, f)]
        if missing:
            raise ValueError(f"{self.type} auth needs {', '.join(repr(m) for m in missing)}")
        return self


class RetrySpec(Strict):
    """Exponential backoff with jitter for retriable failures."""

    attempts: int = Field(5, ge=1, le=20)
    backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(8.0, ge=0)


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)$")


def peak_windows(hours: str) -> list[tuple[int, int]]:
    """`"07:30-11:30,13:30-17:00"` -> [(450, 690), (810, 1020)]: minutes of the local day; an end before its start
    runs past midnight ("22:00-02:00"); "" or "none": no window.

    Raises:
        ValueError: a window not written HH:MM-HH:MM, or one that starts when it ends.
    """
    found = []
    for part in (p.strip() for p in hours.split(",")):
        if part in ("", "none"):
            continue
        match = HOURS.match(part)
        if not match or (match.group(3) == "24" and match.group(4) != "00"):
            raise ValueError(f"peak hours {part!r}: write HH:MM-HH:MM in local time, e.g. 07:30-11:30")
        start, end = int(match.group(1)) * 60 + int(match.group(2)), int(match.group(3)) * 60 + int(match.group(4))
        if start == end:
            raise ValueError(f"peak hours {part!r}: a window must end after it starts")
        found.append((start, end))
    return found


LOCAL_TZ = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")


def peak_until(windows: list[tuple[int, int]], days: set[int], at: datetime) -> datetime | None:
    """The end (UTC) of the peak window that holds `at`, or None off peak. `days`: weekdays (Monday 0) on which
    a window starts; one that runs past midnight ends the next day."""
    local = at.astimezone(LOCAL_TZ)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    minute = (local - midnight).total_seconds() / 60
    for start, end in windows:
        if start < end:
            if local.weekday() in days and start <= minute < end:
                return (midnight + timedelta(minutes=end)).astimezone(timezone.utc)
        elif local.weekday() in days and minute >= start:
            return (midnight + timedelta(days=1, minutes=end)).astimezone(timezone.utc)
        elif (local.weekday() - 1) % 7 in days and minute < end:
            return (midnight + timedelta(minutes=end)).astimezone(timezone.utc)
    return None


class PeakSpec(Strict):
    """The peer's busy hours (local time, Asia/Ho_Chi_Minh), when lgsp's background calls to it (pulls, drift
    checks, pushes) slow to `rate_per_s` so its capacity goes to people: VNeID and the national population
    database are "overloaded at peak hours". A gateway lookup (a clerk at a counter waiting) keeps the system's
    own limits.

    `hours` is a list or a comma-separated string and may come from the environment
    (`${LGSP_POPULATION_PEAK_HOURS:-07:30-11:30,13:30-17:00}`; set the variable to `none` for no peak).
    `bulk`: a full refresh or a backfill of the system does not start in its peak hours (`wait`: on Airflow
    its first task is rescheduled to the peak's end; `lgsp run` says so), or runs at the peak rate (`slow`).

    Example:
        {hours: "07:30-11:30,13:30-17:00", days: [mon, tue, wed, thu, fri], rate_per_s: 5}
    """

    hours: str
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = ["mon", "tue", "wed", "thu", "fri"]
    rate_per_s: float = Field(gt=0)
    bulk: Literal["wait", "slow"] = "wait"

    @field_validator("hours", mode="before")
    @classmethod
    def _joined(cls, value: Any) -> Any:
        return ",".join(str(v) for v in value) if isinstance(value, list) else value

    @field_validator("hours")
    @classmethod
    def _windows(cls, value: str) -> str:
        from catalog.loader import expand_env  # the loader imports these models

        peak_windows(expand_env(value))  # the form it has now, so a typo is caught by `lgsp catalog`
        return value


class LimitsSpec(Strict):
    """How hard lgsp may push a peer: requests per second, calls in flight, when to stop trying; and more
    gently in its peak hours (`peak`)."""

    rate_per_s: float | None = Field(None, gt=0)
    max_concurrency: int = Field(2, ge=1, le=64)
    breaker_failures: int = Field(8, ge=1)
    breaker_reset_s: float = Field(60.0, gt=0)
    peak: PeakSpec | None = None


class MessageLogSpec(Strict):
    """What the message log keeps of each exchange (hashes and sizes always; bodies only if asked)."""

    bodies: bool = False
    max_body_bytes: int = Field(16384, ge=0)


EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class SystemSpec(Strict):
    """An external system: where it is, how to talk to it, how to authenticate, and who looks after its data.

    `owner` (the agency or team) and `alert_to` (their addresses) route alerts: a failed or late run,
    a stale pipeline or an overdue report of this system also mails `alert_to` (lgsp.alerts).
    """

    name: Identifier
    title: str
    owner: str = ""
    alert_to: list[str] = []
    protocol: Literal["soap", "rest", "reference"]
    endpoint: str
    auth: AuthSpec = AuthSpec()
    timeout_s: float = Field(15.0, gt=0)
    retry: RetrySpec = RetrySpec()
    limits: LimitsSpec = LimitsSpec()
    health_path: str = "/health"
    max_response_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    error_field: str | None = None
    ok_values: list[str] = ["0"]
    message_field: str = "message"
    message_log: MessageLogSpec = MessageLogSpec()

    @field_validator("alert_to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        wrong = [a for a in value if not EMAIL.match(a)]
        if wrong:
            raise ValueError(f"not e-mail addresses: {wrong}")
        return value


ColumnType = Literal["string", "integer", "float", "boolean", "date", "timestamp"]


class ReferenceSpec(Strict):
    """The column names a record of another dataset by its key (`to: procedure.procedure_code`).

    lgsp.references checks it in the warehouse: a row whose value no record of `to` has is an
    orphan. Records arrive from different systems at different times, so an orphan is only
    `pending` while the row is younger than `grace` (its `_loaded_at`); older, the reference is
    `broken`, which `lgsp status` reports with `severity` (warning, or error: exit 1) and the
    lgsp_freshness DAG alerts on. Orphans are counted, never quarantined: the row itself is valid,
    the record it names is missing. In catalog/datasets.yaml, `references: procedure.procedure_code`
    is short for `references: {to: procedure.procedure_code}`.
    """

    to: str = Field(pattern=r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")
    grace: Duration = Field(default=86400.0, ge=0)
    severity: Literal["warning", "error"] = "warning"

    @property
    def dataset(self) -> str:
        return self.to.split(".")[0]

    @property
    def column(self) -> str:
        return self.to.split(".")[1]


class ColumnSpec(Strict):
    """One column of a dataset: `description` (English) and `description_vi` (Vietnamese; the portal's
    Vietnamese pages show it, or `description` when it is absent) say what it holds; `references`
    says it names a record of another dataset (ReferenceSpec).

    A date or timestamp column reads ISO 8601 text (or the date and time values SOAP gives). A source
    that writes them otherwise says how in `format`, a `strptime` pattern: `%d/%m/%Y` for `15/08/1990`,
    `%Y%m%d%H%M%S` for the DVCQG's `20250815093000`. `timezone` (an IANA name, `Asia/Ho_Chi_Minh`) is
    the zone of a timestamp written without one; without it such a time is taken as UTC. A time that
    carries its zone (`+07:00`, `Z`, `%z`) is read in its own zone either way.
    """

    type: ColumnType
    required: bool = False
    description: str = ""
    description_vi: str = ""
    references: ReferenceSpec | None = None
    format: str | None = None
    timezone: str | None = None

    @field_validator("references", mode="before")
    @classmethod
    def _short_reference(cls, value: Any) -> Any:
        return {"to": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _time_options(self) -> "ColumnSpec":
        if self.format is not None:
            if self.type not in ("date", "timestamp"):
                raise ValueError(f"format is for date and timestamp columns, not {self.type}")
            check_time_format(self.format)
        if self.timezone is not None:
            if self.type != "timestamp":
                raise ValueError(f"timezone is for timestamp columns, not {self.type}")
            check_timezone(self.timezone)
        return self


TIME_DIRECTIVES = set("aAwdbBmyYHIpMSfzjUWcxX%")  # what strptime reads (no locale-free meaning for the rest)


def check_time_format(pattern: str) -> None:
    """Raise ValueError unless `pattern` is a `strptime` pattern that reads back what it writes."""
    from datetime import datetime

    used = re.findall(r"%(.)", pattern)
    if not used:
        raise ValueError(f"format {pattern!r} has no %-directive: it is a strptime pattern, "
                         "e.g. %d/%m/%Y for 15/08/1990 or %Y%m%d%H%M%S for 20250815093000")
    unknown = sorted(set(used) - TIME_DIRECTIVES)
    if unknown:
        raise ValueError(f"format {pattern!r}: unknown directive(s) {', '.join('%' + d for d in unknown)} "
                         "(strptime's: %d %m %Y %y %H %M %S %f %z %b ...)")
    sample = datetime(2025, 8, 15, 9, 30, 5, 123456).astimezone()
    try:
        datetime.strptime(sample.strftime(pattern), pattern)
    except ValueError as exc:
        raise ValueError(f"format {pattern!r} cannot read what it writes: {exc}") from None


def check_timezone(name: str) -> None:
    """Raise ValueError unless `name` is a time zone this machine knows (IANA: Asia/Ho_Chi_Minh, UTC)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {name!r} is not an IANA time zone name (e.g. Asia/Ho_Chi_Minh, UTC)") from None


class CheckSpec(BaseModel):
    """A row rule, named by `rule` (see quality.rules.RULES); other keys are its parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    rule: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ExpectationsSpec(Strict):
    """Dataset-level expectations (Great Expectations); a failure fails the run."""

    max_quarantine_rate: float = Field(0.2, ge=0, le=1)
    min_rows: int = Field(0, ge=0)


WriteMode = Literal["merge", "append", "replace", "history"]


# Page room for the updated versions of rows (measured on the benchmark's 1M-row citizen table, 10,000 rows
# changed after a checkpoint: the upsert 107 ms against 130 at 100, every update HOT; docs/performance.md)
UPDATING_FILLFACTOR = 90


def check_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """A filter maps a column to a value (equality), a list (one of), null (is null), or `{not: ...}` of one of
    those (not equal, none of, is not null); a null value matches neither a value nor its `not`."""
    for column, wanted in filters.items():
        inner = wanted["not"] if isinstance(wanted, dict) and set(wanted) == {"not"} else wanted
        if isinstance(inner, dict) or (isinstance(inner, list) and any(isinstance(v, (dict, list)) for v in inner)):
            raise ValueError(f"filter on '{column}': give a value, a list of values, null, or {{not: one of "
                             f"those}} (e.g. {{not: null}}: is not null), not {wanted!r}")
    return filters


Filters = Annotated[dict[str, Any], AfterValidator(check_filters)]
"""Filters (indicators, rules across rows): see `check_filters`; SQL in `indicators.query.condition`."""


class GroupCheckSpec(Strict):
    """A rule across the rows of one dataset, which no single row can break: among the rows matching `where`
    (the current versions of a history dataset), grouped by `group_by`, each group has between `min` and `max`
    rows matching `count` (all of the group's rows when it is empty), or with `distinct: column` between `min`
    and `max` distinct values of that column among them (nulls not counted). E.g. a household has exactly one
    current head: `{group_by: [household_id], where: {left_on: null}, count: {relation: head}, min: 1, max: 1}`;
    its current members name one head: `{..., distinct: head_personal_id, max: 1}`.

    Filters are the indicators' (`{column: value}`, `{column: [a, b]}`, `{column: null}`). lgsp.group_checks
    checks it in the warehouse, across what has landed: a group that breaks it is `pending` while one of its
    rows was written less than `grace` ago (the rest of the change may be on its way), then `broken`, which
    `lgsp status` reports with `severity` and the lgsp_freshness DAG alerts on. Rows are never quarantined
    for it: each is valid, the group is not.
    """

    description: str = ""
    description_vi: str = ""  # the portal's Vietnamese page shows it (the English one when empty)
    group_by: list[str] = Field(min_length=1)
    where: Filters = {}
    count: Filters = {}
    distinct: str | None = None  # count the distinct values of this column (among the rows `count` matches)
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)
    grace: Duration = Field(default=0.0, ge=0)
    severity: Literal["warning", "error"] = "warning"

    @model_validator(mode="after")
    def _bounded(self) -> "GroupCheckSpec":
        if self.min is None and self.max is None:
            raise ValueError("a group check needs 'min', 'max' or both (how many rows a group may have)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is more than max ({self.max})")
        return self

    @property
    def columns_used(self) -> list[str]:
        return [*self.group_by, *self.where, *self.count, *([self.distinct] if self.distinct else [])]


class DatasetSpec(Strict):
    """A canonical dataset: columns, key, incremental cursor, rules, and how a batch is written.

    `write_mode` (see warehouse.store.Warehouse.write_batch):
      - merge (default): upsert on `key`, only rows whose content hash changed;
      - append: every row of every batch is kept; the table's primary key is `key` + `_batch_id`;
      - replace: a full refresh; the batch is loaded into `<table>__new`, which is swapped in atomically
        (so one unpartitioned pipeline loads it: catalog.loader refuses a partition or a second pipeline);
      - history: SCD type 2; `valid_from`, `valid_to` (null = current) and `is_current` columns, primary
        key `key` + `valid_from`; a version starts at the row's `cursor_field` value (or the load time).
    `delete_field` names a boolean column: true means the source deleted the record (merge deletes
    the row, history closes its current version; append and replace keep it as data).
    `fillfactor` (PostgreSQL, 10-100): how full a page of the table is filled by inserts; the rest
    is left for updated versions of its rows, which then stay on their page and need no new key
    index entry (HOT updates). Default: 90 for the write modes that update rows (merge, history),
    PostgreSQL's 100 for append and replace (`table_fillfactor`).
    """

    name: Identifier
    title: str
    title_vi: str = ""  # the Vietnamese title where no catalog/sharing.yaml entry gives one (a person's notice)
    layer: Literal["core", "mart"] = "core"
    key: list[str] = Field(min_length=1)
    cursor_field: str | None = None
    columns: dict[str, ColumnSpec]
    checks: list[CheckSpec] = []
    group_checks: dict[Identifier, GroupCheckSpec] = {}
    expectations: ExpectationsSpec = ExpectationsSpec()
    write_mode: WriteMode = "merge"
    delete_field: str | None = None
    fillfactor: int | None = Field(default=None, ge=10, le=100)

    @model_validator(mode="after")
    def _columns_exist(self) -> "DatasetSpec":
        for field_name in [*self.key, *([self.cursor_field] if self.cursor_field else [])]:
            if field_name not in self.columns:
                raise ValueError(f"'{field_name}' (key or cursor_field) is not a declared column")
        for name, check in self.group_checks.items():
            for field_name in check.columns_used:
                if field_name not in self.columns:
                    raise ValueError(f"group_checks.{name}: '{field_name}' is not a declared column")
        return self

    @model_validator(mode="after")
    def _write_mode_fits(self) -> "DatasetSpec":
        if self.delete_field is not None:
            column = self.columns.get(self.delete_field)
            if column is None or column.type != "boolean" or self.delete_field in self.key:
                raise ValueError(f"delete_field '{self.delete_field}' must be a declared boolean column, not a key")
        if self.write_mode != "merge" and self.layer != "core":
            raise ValueError(f"write_mode '{self.write_mode}' is for core datasets; a mart table is merged")
        if self.write_mode == "history":
            reserved = {"valid_from", "valid_to", "is_current"} & set(self.columns)
            if reserved:
                raise ValueError(f"history datasets add {sorted(reserved)} themselves; rename those columns")
            if self.cursor_field and self.columns[self.cursor_field].type != "timestamp":
                raise ValueError(f"history versions start at cursor_field '{self.cursor_field}', which must be a "
                                 "timestamp (or leave cursor_field out: versions then start at the load time)")
        return self

    @property
    def table_fillfactor(self) -> int:
        """The table's fillfactor on PostgreSQL: as declared, else 90 if its rows are updated, else 100."""
        if self.fillfactor is not None:
            return self.fillfactor
        return UPDATING_FILLFACTOR if self.write_mode in ("merge", "history") else 100

    @property
    def table_name(self) -> str:
        """`core_<name>` (curated from the sources) or `mart_<name>` (computed, e.g. indicator values)."""
        return f"{self.layer}_{self.name}"


class PaginatorSpec(BaseModel):
    """A paging strategy named by `type` (see connectors.paging.PAGINATORS)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SourceSpec(Strict):
    """Where a pipeline reads: a system and one of its operations.

    For REST, `operation` is a path; for SOAP, an operation name. `method: POST`
    sends `params` (and the paging and cursor parameters) as a JSON body.
    `fields` renames source fields to dataset columns (`{MaTTHC: procedure_code}`);
    `cursor_format` says how the cursor (and the until bound) is written in a request: `iso`
    (`2025-08-01T00:00:00+00:00`), `iso_z` (`...T00:00:00Z`), `dvcqg` (`20250801070000`, Vietnam's
    time), or a `strptime` pattern (`%d/%m/%Y %H:%M:%S`) written in `cursor_timezone` (default UTC).
    """

    system: Identifier
    operation: str
    method: Literal["GET", "POST"] = "GET"
    cursor_param: str | None = None
    until_param: str | None = None
    cursor_format: str = "iso"
    cursor_timezone: str | None = None
    records_field: str = "items"
    params: dict[str, Any] = {}
    fields: dict[str, str] = {}
    paginator: PaginatorSpec = PaginatorSpec(type="single")
    total_field: str | None = None  # dotted path of the answer's count of the window's records (`lgsp reconcile`)

    @model_validator(mode="after")
    def _cursor_written(self) -> "SourceSpec":
        if self.cursor_format not in CURSOR_STYLES:
            if "%" not in self.cursor_format:
                raise ValueError(f"cursor_format {self.cursor_format!r}: one of {', '.join(CURSOR_STYLES)} "
                                 "or a strptime pattern (%d/%m/%Y %H:%M:%S)")
            check_time_format(self.cursor_format)
        if self.cursor_timezone is not None:
            if self.cursor_format in CURSOR_STYLES:
                raise ValueError(f"cursor_timezone is for a cursor_format pattern; {self.cursor_format} "
                                 "says its own zone")
            check_timezone(self.cursor_timezone)
        return self


CURSOR_STYLES = ("iso", "iso_z", "dvcqg")


class PartitionSpec(Strict):
    """How a big sync splits into mapped tasks, each pulling one slice the source can filter on.

    The slices are half-open ranges `[from_param, to_param)` of one field; the
    first is open below and the last open above, so every row (even one with
    an unknown commune) falls in exactly one slice. `by` names the strategy
    (see lgsp.partitions.PARTITIONERS):
      - commune: the official commune codes of `province`, cut into `partitions` ranges;
      - key_range: the split points in `bounds` (n bounds -> n + 1 ranges).

    Example:
        {by: commune, province: 37, partitions: 4, from_param: commune_from, to_param: commune_to}
    """

    by: Literal["commune", "key_range"]
    from_param: str
    to_param: str
    partitions: int = Field(4, ge=2, le=64)
    province: int | None = Field(None, ge=1)
    bounds: list[str] = []

    @model_validator(mode="after")
    def _strategy_complete(self) -> "PartitionSpec":
        if self.by == "commune" and self.province is None:
            raise ValueError("partition by commune needs 'province' (the code whose communes are split)")
        if self.by == "key_range" and (not self.bounds or self.bounds != sorted(set(self.bounds))):
            raise ValueError("partition by key_range needs 'bounds': split points, sorted, no repeats")
        return self


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_s(value: Any) -> float:
    """Seconds from a number of seconds or a duration such as "90m", "3h", "2d", "1w"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = DURATION.match(str(value))
    if match is None:
        raise ValueError(f"{value!r} is not a duration: write seconds or a number and a unit s, m, h, d or w "
                         "(e.g. 90m, 3h, 2d)")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


class FreshnessSpec(Strict):
    """How old a pipeline's last complete sync may get (lgsp.freshness; `lgsp status`).

    Its age is the time since the last sync that read the source to the end and committed
    (not a backfill). Older than `warn_after`: "warn"; older than `error_after`: "stale",
    which `lgsp status` exits 1 on and the `lgsp_freshness` DAG alerts on. Durations are
    seconds or "90m", "3h", "2d", "1w".
    """

    warn_after: Duration = Field(gt=0)
    error_after: Duration = Field(gt=0)

    @model_validator(mode="after")
    def _warn_first(self) -> "FreshnessSpec":
        if self.warn_after > self.error_after:
            raise ValueError("warn_after must not be longer than error_after")
        return self


class PipelineSpec(Strict):
    """A pipeline: source -> dataset -> targets, on a schedule.

    Airflow retries a failed task `retries` times, waiting `retry_delay_s`,
    doubling each time up to `max_retry_delay_s`. A run not finished
    `late_after_s` after it was queued raises a late alert (lgsp.alerts).
    `freshness` says how old its last complete sync may get (FreshnessSpec).
    """

    name: Identifier
    title: str
    source: SourceSpec
    dataset: Identifier
    targets: list[Literal["lake", "warehouse"]] = ["lake", "warehouse"]
    schedule: str | None = None
    retries: int = Field(3, ge=0)
    retry_delay_s: float = Field(30.0, gt=0)
    max_retry_delay_s: float = Field(900.0, gt=0)
    late_after_s: float | None = Field(None, gt=0)
    freshness: FreshnessSpec | None = None
    lookback_s: float = Field(0.0, ge=0)
    partition: PartitionSpec | None = None
    tags: list[str] = []

    @model_validator(mode="after")
    def _partition_has_window(self) -> "PipelineSpec":
        if self.partition is not None and not self.source.until_param:
            raise ValueError("a partitioned pipeline needs source.until_param: every partition reads the same "
                             "closed window [cursor, start of the run)")
        return self


class FieldMapSpec(Strict):
    """One field of an outgoing message: from a column, a literal, or the message's idempotency key."""

    column: str | None = None
    value: Any = None
    idempotency_key: bool = False
    format: Literal["raw", "iso", "dvcqg", "date", "str"] = "raw"
    map: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_source(self) -> "FieldMapSpec":
        if sum([self.column is not None, self.value is not None, self.idempotency_key]) != 1:
            raise ValueError("give exactly one of 'column', 'value', 'idempotency_key: true'")
        return self


class FeedDueSpec(Strict):
    """When a feed's report for a period is due: `after` (seconds, or "5d", "12h") once the period
    (the row's `period_column`: '2025-08', '2025-Q3', '2025', or a date range) has ended, local time."""

    period_column: str
    after: Duration = Field(ge=0)


class FeedSpec(Strict):
    """A push feed: rows of a warehouse table -> messages to a system, through the outbox.

    Every message carries an idempotency key (the receiver deduplicates on it)
    and is retried until acknowledged, or until `max_attempts`, after which it
    is dead-lettered (`lgsp outbox list --status dead`, `lgsp outbox retry`).
    `due` says when each period's report must have been acknowledged (lgsp.deadlines).
    """

    name: Identifier
    title: str
    system: Identifier
    operation: str
    table: str
    key: list[str] = Field(min_length=1)
    where: dict[str, Any] = {}
    body: dict[str, Any] = {}
    records_param: str = "data"
    batch_size: int = Field(50, ge=1, le=1000)
    mapping: dict[str, FieldMapSpec]
    change_columns: list[str] = []
    after: list[Identifier] = []
    max_attempts: int = Field(8, ge=1)
    schedule: str | None = None
    due: FeedDueSpec | None = None
    tags: list[str] = []


UnitLevel = Literal["commune", "agency", "procedure", "procedure_level"]
PeriodType = Literal["month", "quarter", "year"]


class UnitVia(Strict):
    """A unit read through a reference: the `column` of the record the dataset's column `via` names (it declares
    `references`), as that record is now. E.g. a dossier's level (Tỉnh or Xã) is its procedure's
    `level` in the DVCQG catalogue: `procedure_level: {via: procedure_code, column: level}`. A row whose
    record is missing, or holds no value there, is counted for the province only (as a null unit code)."""

    via: str
    column: str


class IndicatorSpec(Strict):
    """An indicator: a numerator and a denominator counted over the rows of one core table.

    Filters map a column to a value (equality), a list (one of), null (is null), or `{not: ...}` of one of
    those (e.g. `{certificate_no: {not: null}}`).
    The denominator counts the rows matching `denominator`; the numerator counts those
    of them that also match `numerator` (so it never exceeds the denominator). A row
    belongs to the period (local time, UTC+7) of its `date_column`; rows without one
    are left out. With `as_of: period_end` (and no `date_column`) an indicator counts
    instead the records the table held at each period's end (now, for the period under
    way), as the lake and the change log say it held them: the state of a catalogue or
    of master data, e.g. the procedures with no administrative boundary (`indicators.snapshot`).
    Values are computed for the province and for each unit level in
    `units` (level -> the column holding the unit's code, or `{via: column, column: other}`: the
    column of the record a referencing column names, `UnitVia`), per month, quarter and year.
    With `measure: average` the numerator is instead the sum of the seconds between
    the two `sum_seconds` columns over the denominator's rows, and
    value = numerator / denominator / `value_scale` (86400: days).

    Changing the definition (anything but names and description) means bumping
    `version`: the values of the old version stay in the mart, readable.

    Example:
        on_time_settlement_rate: {version: 1, name_vi: ..., name_en: ..., dataset: dossier,
          date_column: finished_at, units: {commune: commune_code},
          denominator: {settlement: [early, on_time, late]}, numerator: {settlement: [early, on_time]}}
    """

    name: Identifier
    version: int = Field(ge=1)
    name_vi: str
    name_en: str
    description: str = ""
    dataset: Identifier
    date_column: str | None = None
    as_of: Literal["period_end"] | None = None
    units: dict[UnitLevel, str | UnitVia] = {}
    periods: list[PeriodType] = ["month", "quarter", "year"]
    measure: Literal["rate", "average"] = "rate"
    denominator: Filters = {}
    numerator: Filters = {}
    sum_seconds: tuple[str, str] | None = None
    value_scale: float = Field(1.0, gt=0)
    value_unit: str = "ratio"
    lower_is_better: bool = False
    reads: list[Identifier] = []

    @model_validator(mode="after")
    def _measure_fits(self) -> "IndicatorSpec":
        if self.measure == "rate" and (not self.numerator or self.sum_seconds):
            raise ValueError("a rate needs 'numerator' filters and no 'sum_seconds'")
        if self.measure == "average" and not self.sum_seconds:
            raise ValueError("an average needs 'sum_seconds: [from_column, to_column]'")
        if "month" not in self.periods:
            raise ValueError("periods must include 'month' (quarters and years are sums of months)")
        if (self.date_column is None) == (self.as_of is None):
            raise ValueError("give either 'date_column' (count the rows dated in each period) or 'as_of: period_end' "
                             "(count the records held at each period's end), not both nor neither")
        if self.as_of is not None and self.measure != "rate":
            raise ValueError("'as_of: period_end' counts records, so its measure is a rate")
        return self

    @property
    def datasets_read(self) -> list[str]:
        """The datasets whose changes make this indicator stale (`reads`, default: its dataset)."""
        return self.reads or [self.dataset]

    @property
    def columns_used(self) -> list[str]:
        """Every column of `dataset` the definition names (for the catalog's cross-check)."""
        dated = [self.date_column] if self.date_column else []
        return [*dated, *self.unit_columns, *self.denominator, *self.numerator, *(self.sum_seconds or ())]

    @property
    def unit_columns(self) -> list[str]:
        """The columns of `dataset` the units read (a unit through a reference: its referencing column)."""
        return [unit.via if isinstance(unit, UnitVia) else unit for unit in self.units.values()]


class RankingSpec(Strict):
    """A composite ranking of units (catalog/rankings.yaml): a weighted mean of indicator scores, 0..100.

    An indicator's score is its value (a rate, 0..1), or 1 - value when the
    indicator is `lower_is_better`; a unit's score is 100 x the weighted mean of
    the scores it has (an indicator with fewer than `min_denominator` rows for the
    unit is left out and the weights of the others renormalised); a unit with less
    than `min_weight_share` of the total weight is not ranked.
    """

    name: Identifier
    title_vi: str
    title_en: str
    unit_level: UnitLevel
    period_type: PeriodType = "year"
    unit_prefix: str = ""
    weights: dict[Identifier, float] = Field(min_length=1)
    min_denominator: int = Field(1, ge=1)
    min_weight_share: float = Field(0.5, gt=0, le=1)

    @field_validator("weights")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(w <= 0 for w in value.values()):
            raise ValueError("every weight must be > 0")
        return value


PersonalPolicy = Literal["mask", "pseudonym", "withhold"]


class LookupSpec(Strict):
    """A live lookup: one record of a shared dataset asked of its source system now, by its key.

    An agency asks the gateway (`GET /api/v1/datasets/<name>/lookup?<key>=...`); the gateway
    calls `operation` of `system` with the key (through the system's auth, limits and circuit
    breaker), checks the answer with the dataset's row rules and protects it as a records read
    would. When the source cannot answer (down, too slow, circuit open, an answer that fails the
    checks), the warehouse's copy answers instead, saying so and how old it is (`fallback:
    warehouse`), or the lookup fails with 503 (`fallback: none`).

    Example (catalog/sharing.yaml):
        lookup: {system: population, operation: GetCitizen}
    """

    system: Identifier
    operation: str
    key_params: dict[str, str] = {}  # key column -> the operation's argument (default: the column's own name)
    params: dict[str, Any] = {}  # fixed arguments sent with every lookup
    record_field: str = ""  # dotted path of the record in the answer ("" = the answer is the record)
    fields: dict[str, str] = {}  # source field -> dataset column, as a pipeline source's `fields`
    not_found: list[str] = ["Client.NotFound", "HTTP 404"]  # refusals that mean "no such record"
    timeout_s: float = Field(5.0, gt=0)  # per attempt: a clerk is waiting
    attempts: int = Field(2, ge=1, le=5)
    cache_s: float = Field(60.0, ge=0)  # a live answer is reused this long (per gateway process); 0: never
    fallback: Literal["warehouse", "none"] = "warehouse"
    drift_schedule: str | None = None  # cron (Vietnam time) of the DAG lgsp_drift_<dataset> (`lgsp drift`); None: none
    drift_sample: int = Field(200, ge=1, le=100_000)  # records that DAG asks the source for


class SharedDatasetSpec(Strict):
    """A dataset agencies may read through the sharing gateway (catalog/sharing.yaml).

    The warehouse's shared layer has one view per entry, `shared_<dataset>`, with only
    `columns` (and, for a history dataset, only the current versions). `personal` names
    the columns holding personal data and what an agency whose grant does not include a
    column sees instead (see gateway.policy.PERSONAL_POLICIES): `mask` (`*********123`),
    `pseudonym` (a keyed hash, stable across requests) or `withhold` (null). `title_vi` and
    `description_vi` are the Vietnamese title and description the portal shows by default (absent: the
    English title of datasets.yaml and `description`).

    Example:
        citizen: {owner: Provincial Police, licence: restricted-government-use, access: restricted,
                  columns: [personal_id, full_name, commune_code], filterable: [commune_code],
                  personal: {personal_id: pseudonym, full_name: mask}}
    """

    name: Identifier
    description: str = ""
    title_vi: str = ""
    description_vi: str = ""
    owner: str
    licence: str
    access: Literal["open", "restricted"] = "restricted"
    columns: list[str] = Field(min_length=1)
    filterable: list[str] = []
    personal: dict[str, PersonalPolicy] = {}
    lookup: LookupSpec | None = None

    @property
    def view_name(self) -> str:
        """`shared_<dataset>`: the view in the warehouse's shared layer."""
        return f"shared_{self.name}"

    @model_validator(mode="after")
    def _consistent(self) -> "SharedDatasetSpec":
        for group in ("filterable", "personal"):
            unknown = [c for c in getattr(self, group) if c not in self.columns]
            if unknown:
                raise ValueError(f"{group} names {unknown}, which are not among the shared columns")
        if self.access == "open" and self.personal:
            raise ValueError(f"an open dataset cannot expose personal columns {sorted(self.personal)}: "
                             "make it restricted or leave those columns out")
        return self


class Catalog(Strict):
    """Everything lgsp knows about: validated and cross-referenced."""

    systems: dict[str, SystemSpec]
    datasets: dict[str, DatasetSpec]
    pipelines: dict[str, PipelineSpec]
    indicators: dict[str, IndicatorSpec] = {}
    rankings: dict[str, RankingSpec] = {}
    feeds: dict[str, FeedSpec] = {}
    sharing: dict[str, SharedDatasetSpec] = {}

    def pipeline(self, name: str) -> PipelineSpec:
        try:
            return self.pipelines[name]
        except KeyError:
            known = ", ".join(sorted(self.pipelines))
            raise KeyError(f"no pipeline named '{name}' in the catalog (known: {known})") from None
