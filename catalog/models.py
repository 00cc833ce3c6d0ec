"""Typed models of the declarative catalog (systems, datasets, pipelines, indicators).

The YAML files next to this module are validated against these models on load;
`catalog.loader.load_catalog` turns any validation error into a `CatalogError`
that names the file and the offending field.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


class Strict(BaseModel):
    """Base: unknown fields are an error, so a typo in YAML is caught."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthSpec(Strict):
    """How lgsp authenticates to a system.

    `secret` is a reference, never a value: `env:VAR_NAME` or
    `conn:CONN_ID` (an Airflow Connection; its password is used).
    """

    type: Literal["none", "api_key", "basic"] = "none"
    header: str | None = None
    username: str | None = None
    secret: str | None = None

    @field_validator("secret")
    @classmethod
    def _secret_is_reference(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(env|conn):[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError("must be a reference 'env:VAR' or 'conn:CONN_ID', never the secret itself")
        return value

    @model_validator(mode="after")
    def _complete(self) -> "AuthSpec":
        if self.type == "api_key" and not (self.header and self.secret):
            raise ValueError("api_key auth needs 'header' and 'secret'")
        if self.type == "basic" and not (self.username and self.secret):
            raise ValueError("basic auth needs 'username' and 'secret'")
        return self


class RetrySpec(Strict):
    """Exponential backoff with jitter for retriable failures."""

    attempts: int = Field(5, ge=1, le=20)
    backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(8.0, ge=0)


class SystemSpec(Strict):
    """An external system: where it is, how to talk to it, how to authenticate."""

    name: Identifier
    title: str
    protocol: Literal["soap", "rest"]
    endpoint: str
    auth: AuthSpec = AuthSpec()
    timeout_s: float = Field(15.0, gt=0)
    retry: RetrySpec = RetrySpec()


ColumnType = Literal["string", "integer", "float", "boolean", "date", "timestamp"]


class ColumnSpec(Strict):
    """One column of a dataset."""

    type: ColumnType
    required: bool = False
    description: str = ""


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


class DatasetSpec(Strict):
    """A canonical dataset: columns, key, incremental cursor, rules."""

    name: Identifier
    title: str
    key: list[str] = Field(min_length=1)
    cursor_field: str | None = None
    columns: dict[str, ColumnSpec]
    checks: list[CheckSpec] = []
    expectations: ExpectationsSpec = ExpectationsSpec()

    @model_validator(mode="after")
    def _columns_exist(self) -> "DatasetSpec":
        for field_name in [*self.key, *([self.cursor_field] if self.cursor_field else [])]:
            if field_name not in self.columns:
                raise ValueError(f"'{field_name}' (key or cursor_field) is not a declared column")
        return self

    @property
    def table_name(self) -> str:
        return f"core_{self.name}"


class PaginatorSpec(BaseModel):
    """A paging strategy named by `type` (see connectors.paging.PAGINATORS)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SourceSpec(Strict):
    """Where a pipeline reads: a system and one of its operations."""

    system: Identifier
    operation: str
    cursor_param: str | None = None
    records_field: str = "items"
    params: dict[str, Any] = {}
    paginator: PaginatorSpec = PaginatorSpec(type="single")


class PipelineSpec(Strict):
    """A pipeline: source -> dataset -> targets, on a schedule."""

    name: Identifier
    title: str
    source: SourceSpec
    dataset: Identifier
    targets: list[Literal["lake", "warehouse"]] = ["lake", "warehouse"]
    schedule: str | None = None
    retries: int = Field(3, ge=0)
    tags: list[str] = []


class IndicatorSpec(Strict):
    """An indicator: numerator and denominator as equality filters over one core table."""

    name: Identifier
    version: int = Field(ge=1)
    name_vi: str
    name_en: str
    dataset: Identifier
    date_column: str
    unit_level: Literal["province", "commune"]
    unit_column: str
    period: Literal["month"] = "month"
    numerator: dict[str, Any]
    denominator: dict[str, Any] = {}
    reads: list[Identifier]


class Catalog(Strict):
    """Everything lgsp knows about: validated and cross-referenced."""

    systems: dict[str, SystemSpec]
    datasets: dict[str, DatasetSpec]
    pipelines: dict[str, PipelineSpec]
    indicators: dict[str, IndicatorSpec] = {}

    def pipeline(self, name: str) -> PipelineSpec:
        try:
            return self.pipelines[name]
        except KeyError:
            known = ", ".join(sorted(self.pipelines))
            raise KeyError(f"no pipeline named '{name}' in the catalog (known: {known})") from None
