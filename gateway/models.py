"""Response models of the gateway's REST API (they make the OpenAPI document)."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, create_model

from catalog.models import DatasetSpec, SharedDatasetSpec

PY_TYPES: dict[str, type] = {"string": str, "integer": int, "float": float, "boolean": bool,
                             "date": date, "timestamp": datetime}


class ErrorDetail(BaseModel):
    status: int
    message: str


class ErrorBody(BaseModel):
    """Every error: the HTTP status and what to do; never a stack trace."""

    error: ErrorDetail


class ColumnReference(BaseModel):
    """The dataset whose key a column holds; `path`: that dataset's description here (null: not shared)."""

    dataset: str
    field: str
    path: Optional[str]


class ColumnInfo(BaseModel):
    name: str
    type: Literal["string", "integer", "float", "boolean", "date", "timestamp"]
    description: str
    description_vi: Optional[str] = None  # the Vietnamese description (catalog/datasets.yaml); null: none
    required: bool
    key: bool
    filterable: bool
    sortable: bool
    personal: Optional[Literal["mask", "pseudonym", "withhold"]]
    references: Optional[ColumnReference] = None  # the column names a record of another dataset; null: it does not


class ReferenceStatus(BaseModel):
    """How many rows name a record lgsp has, for one column with `references` (lgsp.references): `ok` (all),
    `pending` (orphans younger than the grace: their records may be on their way) or `broken`."""

    field: str
    references: str  # dataset.field
    state: Literal["ok", "pending", "broken"]
    rows: int  # rows with a value (current rows of a history dataset)
    orphans: int  # of them, naming a record lgsp does not have
    orphans_past_grace: int


class GroupCheckStatus(BaseModel):
    """A rule across the dataset's rows (lgsp.group_checks), e.g. one current head per household: how many groups
    hold it; `ok` (all), `pending` (the others changed within the grace: the rest may be on its way) or `broken`."""

    check: str  # its name in the catalog
    description: str
    description_vi: Optional[str] = None  # null: none (the English one stands)
    rule: str  # in words: "rows with relation = head per household_id, among rows with left_on null: exactly 1"
    state: Literal["ok", "pending", "broken"]
    groups: int
    breaking: int  # of them, not holding it
    breaking_past_grace: int


class QualityResult(BaseModel):
    batch_id: str
    checked_at: datetime
    success: bool
    expectations: int
    failed: list[str]


class LookupInfo(BaseModel):
    system: str
    key: list[str]
    path: str


class DriftCheck(BaseModel):
    """The last `lgsp drift` check: records of a sample of the copy, by how they compared with the source."""

    checked_at: datetime
    sampled: int
    same: int
    behind: int
    silent: int
    gone_at_source: int


class FreshnessStatus(BaseModel):
    """The dataset's last complete sync against its pipelines' objective (lgsp.freshness; the worst pipeline)."""

    state: Literal["fresh", "warn", "stale", "never"]
    synced_at: Optional[datetime]  # null: never synced completely
    age_s: Optional[float]
    warn_after_s: float
    error_after_s: float


class QualityScore(BaseModel):
    """The dataset's quality scorecard (lgsp.scorecard), each a share from 0 to 1; null: lgsp cannot judge it."""

    overall: Optional[float]  # the lowest of the others
    weakest: Optional[Literal["validity", "timeliness", "consistency", "accuracy"]]
    validity: Optional[float]  # rows the row rules let through, of those pulled in the last 30 days
    timeliness: Optional[float]  # fresh 1, warn 0.5, stale or never 0
    consistency: Optional[float]  # rows naming a record lgsp has, of those naming one
    accuracy: Optional[float]  # records equal at the source, of the last drift check's sample


class DatasetInfo(BaseModel):
    name: str
    title: str
    description: str
    title_vi: Optional[str] = None  # the Vietnamese title and description (catalog/sharing.yaml); null: none
    description_vi: Optional[str] = None
    owner: str
    licence: str
    access: Literal["open", "restricted"]
    key: list[str]
    history: bool
    schema_: list[ColumnInfo] = Field(alias="schema")  # `schema` is a BaseModel attribute
    row_count: int
    freshness: Optional[datetime]
    freshness_status: Optional[FreshnessStatus] = None  # null: no pipeline filling it declares an objective
    last_quality: Optional[QualityResult]
    references: list[ReferenceStatus] = []  # per shared column that names a record of another dataset
    group_checks: list[GroupCheckStatus] = []  # per rule across rows that reads shared columns only
    quality_score: Optional[QualityScore] = None  # null: a mart dataset (computed, not pulled)
    lookup: Optional[LookupInfo] = None
    last_drift_check: Optional[DriftCheck] = None
    changes: Optional[str] = None  # the change feed's path; null: none (gateway.changes)
    # the columns' version (16 hex digits: the same columns as agencies read them, the same version) and since when
    # the gateway has served it (null: not recorded yet); a change is told as a `dataset.schema_changed` event
    schema_version: Optional[str] = None
    schema_since: Optional[datetime] = None

    model_config = ConfigDict(populate_by_name=True)



class DatasetList(BaseModel):
    datasets: list[DatasetInfo]


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int


class WebhookInfo(BaseModel):
    """One of the calling agency's webhooks (gateway.webhooks): no secret, the address without its query."""

    webhook_id: str
    dataset: str  # "*" for an access webhook
    events: Literal["dataset.changed", "access"] = "dataset.changed"
    url: str
    state: Literal["ok", "failing", "dead"]
    created_by: Literal["province", "agency"]
    delivered_change: int
    pending_changes: int
    delivered_at: Optional[datetime]
    attempts: int
    next_attempt_at: Optional[datetime]
    last_status: Optional[int]
    last_error: Optional[str]


class WebhookList(BaseModel):
    webhooks: list[WebhookInfo]


class WebhookDelivery(BaseModel):
    """One attempt to tell an endpoint (a notification, or a ping)."""

    message_id: str  # the `webhook-id` header sent
    first_change: int
    last_change: int
    attempted_at: datetime
    outcome: Literal["delivered", "failed", "dead", "gone"]
    status: Optional[int]
    error: Optional[str]
    duration_ms: int


class WebhookDeliveries(BaseModel):
    webhook_id: str
    deliveries: list[WebhookDelivery]


class AccessRequestIn(BaseModel):
    """An agency asks for a shared dataset (gateway.access_requests): the personal columns it needs in clear
    (the others stay masked or pseudonymised), what for, on what legal basis, until when (null: no end)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(max_length=100)
    purpose: str = Field(min_length=20, max_length=2000)
    personal: list[str] = Field(default=[], max_length=50)
    legal_basis: Optional[str] = Field(default=None, max_length=500)
    until: Optional[Union[date, datetime]] = None  # a date: the end of that day, Vietnam time
    # only some rows: column -> the values asked for, e.g. {"commune_code": ["14455"]}; null: every row
    scope: Optional[dict[str, list[Union[StrictBool, StrictInt, str]]]] = Field(default=None, max_length=5)
    # how many rows a day the purpose needs (reading more is flagged as unusual once granted); null: not said
    daily_rows: Optional[int] = Field(default=None, ge=1, le=10**12)


class AccessRequestInfo(BaseModel):
    """An access request and, once decided, the decision (approved: the grant's personal columns and end)."""

    request_id: str
    dataset: str
    personal: list[str]
    purpose: str
    legal_basis: Optional[str]
    until: Optional[datetime]
    status: Literal["pending", "approved", "denied", "withdrawn"]
    requested_at: datetime
    decided_at: Optional[datetime]
    note: Optional[str]  # the decision's reason
    granted_personal: Optional[list[str]]
    granted_until: Optional[datetime]
    scope: Optional[dict[str, list[Any]]] = None  # the rows asked for (null: every row)
    granted_scope: Optional[dict[str, list[Any]]] = None  # the rows granted (null: every row, or not approved)
    daily_rows: Optional[int] = None  # the rows a day the agency said its purpose needs


class AccessRequestList(BaseModel):
    requests: list[AccessRequestInfo]


class GrantInfo(BaseModel):
    """One of the calling agency's grants: what it may read of a dataset, and until when."""

    dataset: str
    personal: list[str]  # the personal columns it sees in clear (the others masked, pseudonymised or withheld)
    scope: Optional[dict[str, list[Any]]] = None  # the rows it may read (null: every row)
    granted_at: datetime
    expires_at: Optional[datetime] = None  # null: until revoked
    request_id: Optional[str] = None  # the access request it was approved on (null: granted by the province)
    daily_rows: Optional[int] = None  # the rows a day its purpose needs: reading more is flagged as unusual


class GrantList(BaseModel):
    grants: list[GrantInfo]


class GrantGivenUp(BaseModel):
    """An agency gave up its grant on a dataset: it reads nothing of it from now on (ask again to read it)."""

    dataset: str
    outcome: Literal["relinquished"]


class WebhookRequest(BaseModel):
    """An agency's own webhook, at an https address on a host the province allows: told when a dataset it is
    granted changes (`events` "dataset.changed", the default, with `dataset`), or of its own access events
    (`events` "access": requests decided, grants made, changed, revoked, ending or ended; no `dataset`)."""

    model_config = ConfigDict(extra="forbid")

    dataset: Optional[str] = Field(default=None, max_length=100)
    url: str = Field(max_length=2000)
    events: Literal["dataset.changed", "access"] = "dataset.changed"


class UsageEntry(BaseModel):
    """What the calling agency read of one dataset in the window (gateway.usage), from the audit."""

    dataset: str
    requests: int
    by_kind: dict[str, int]  # records, export, lookup, changes, ckan, portal
    refused: int  # answered 4xx or 5xx
    rows: int  # records sent
    first: datetime
    last: datetime


class UsageList(BaseModel):
    since: datetime
    until: Optional[datetime]
    usage: list[UsageEntry]


class AgencyEvent(BaseModel):
    """One of the calling agency's events (gateway.events), as an access webhook sends it (Standard Webhooks'
    payload): `data.event` numbers it; `data.dataset` names the dataset of a request or grant event."""

    type: Literal["access_request.decided", "grant.changed", "grant.ending", "grant.ended", "agency.disabled",
                  "agency.enabled", "credential.issued", "credential.revoked", "dataset.schema_changed"]
    timestamp: datetime
    data: dict[str, Any]


class AgencyEventList(BaseModel):
    events: list[AgencyEvent]
    next_after: int  # pass as `after` for the events after these (the same number when there are none yet)
    more: bool  # more events wait beyond this page


class WebhookSecret(BaseModel):
    """A webhook's signing secret, shown once (a new webhook, or a rotation; the old secret signs 24 h more)."""

    webhook_id: str
    dataset: str
    url: str
    secret: str


class WebhookAttempt(BaseModel):
    """A ping, or a dead webhook revived: what the endpoint answered, or that it will be tried at once."""

    webhook_id: str
    outcome: Literal["delivered", "failed", "revived", "removed"]
    status: Optional[int] = None
    error: Optional[str] = None
    duration_ms: Optional[int] = None


class Health(BaseModel):
    status: Literal["ok"]


def record_model(dataset: DatasetSpec, shared: SharedDatasetSpec) -> type[BaseModel]:
    """One record of a shared dataset; a personal column is a string (masked or pseudonymised) or null."""
    fields: dict[str, Any] = {}
    for column in shared.columns:
        kind = str if column in shared.personal else PY_TYPES[dataset.columns[column].type]
        fields[column] = (Optional[kind], None)
    title = "".join(part.title() for part in shared.name.split("_"))
    return create_model(f"{title}Record", **fields)


def page_model(dataset: DatasetSpec, shared: SharedDatasetSpec) -> type[BaseModel]:
    """A page of records and the cursor of the next page (null at the end)."""
    title = "".join(part.title() for part in shared.name.split("_"))
    return create_model(f"{title}Page", dataset=(str, ...), records=(list[record_model(dataset, shared)], ...),
                        next_cursor=(Optional[str], None), limit=(int, ...))


def lookup_model(dataset: DatasetSpec, shared: SharedDatasetSpec) -> type[BaseModel]:
    """A looked-up record and where it came from."""
    title = "".join(part.title() for part in shared.name.split("_"))
    return create_model(
        f"{title}Lookup", dataset=(str, ...), source=(Literal["live", "warehouse"], ...),
        as_of=(Optional[datetime], None), cached=(bool, False), live_error=(Optional[str], None),
        record=(record_model(dataset, shared), ...))


def changes_model(dataset: DatasetSpec, shared: SharedDatasetSpec) -> type[BaseModel]:
    """A page of the change feed (gateway.changes): upserts carry the record, deletes its key."""
    title = "".join(part.title() for part in shared.name.split("_"))
    key_types = {k: str if k in shared.personal else PY_TYPES[dataset.columns[k].type] for k in dataset.key}
    key = create_model(f"{title}Key", **{k: (Optional[kind], None) for k, kind in key_types.items()})
    change = create_model(f"{title}Change", op=(Literal["upsert", "delete"], ...),
                          record=(Optional[record_model(dataset, shared)], None), key=(Optional[key], None))
    reconcile = (Optional[bool], Field(default=None, description=(
        "On a window's last page, for a grant that covers some rows only: a record may have left them (deleted, "
        "or changed to beyond them); list the keys of your rows (records?fields=<key>) and drop the others")))
    scope_rows = (Optional[int], Field(default=None, description=(
        "With reconcile: how many rows the grant covers now; a copy holding as many after this page has none to "
        "drop")))
    return create_model(f"{title}Changes", dataset=(str, ...), changes=(list[change], ...), next=(str, ...),
                        more=(bool, ...), reconcile=reconcile, scope_rows=scope_rows)
