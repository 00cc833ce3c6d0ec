"""Draft a dataset and its pipeline from what a declared system answers (`lgsp discover`).

Adding a system (docs/adding-a-system.md) is three YAML entries. The system's is short; the
dataset's and the pipeline's are long and easy to get subtly wrong: a column's type, the key, the
field the cursor filters on, the paging parameters, the row rules. `discover` asks the system
itself, through the transport a sync uses (its auth, retries, size cap, secrets redacted from errors), and
writes them as a draft in which every guess was checked against the system's answers:

- **Records.** REST: the answer's largest array of objects. SOAP: the same in the operation's answer.
- **Paging** (REST), from what the answer carries: a total of pages (page numbers), an offset, a
  next-page token (cursor) or link. The page-size parameter is found by asking for 3 records. SOAP:
  the operation's declared arguments (an integer `page`, a string token) and answer fields.
  Then three small pages are walked: none may repeat a record of another.
- **Cursor.** A parameter is the cursor when a far-future value of it empties the answer (REST:
  the usual names are tried; SOAP: the operation's dateTime arguments), and the until parameter
  when a far-past value does. The cursor field is the timestamp column the cursor filters on:
  asked again from the middle of its sampled values, every record answered is at or after it.
- **Columns** from a sample (`sample`, default 1,000 records): each field's type (the JSON value's;
  ISO dates and times are dates and timestamps; SOAP: the type the WSDL declares), required when
  filled in every sampled record (of 100 at least); a nested field is left out (a sync keeps it in
  `_extras`).
- **Names**: a field that is not a column name (`MaHoSo`) gets one (`ma_ho_so`), mapped by the source's
  `fields`; a boolean named as a deletion flag (`deleted`, `da_xoa`) is the `delete_field`.
- **Key**: the first column filled and unique in the whole sample (two columns if none is).
- **Row rules** lgsp knows (quality.rules), proposed when the rule itself, run on the typed sample,
  passes at least 95% of it (99% for the order of two dates); the rest would go to quarantine, and
  the draft says how many.
- **Sharing** (`share`): catalog/sharing.yaml's entry, restricted, every personal-looking column protected
  (a personal ID pseudonymised, a name masked, the rest withheld).

Nothing is written unless asked (`write_draft`): the draft is YAML to read, its guesses noted.
`compare` turns the same reading on a pipeline already in the catalog: does its system still
answer as the catalog says?
"""
from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import yaml

from catalog.models import Catalog, ColumnSpec, DatasetSpec, PipelineSpec, SourceSpec, SystemSpec
from connectors.errors import ConnectorError, FatalError, RetriesExhausted
from connectors.paging import dig
from connectors.retry import call_with_retry
from connectors.source import extract_records, format_cursor, iter_pages
from schemas.arrow import ZONED_TEXT

HOLDS = 0.95  # a type or a rule must hold on this share of the sampled values to be proposed
ORDER_HOLDS = 0.99  # an order of two dates or times must hold on this share (a late dossier is not rare enough)
FUTURE = datetime(2100, 1, 1, tzinfo=timezone.utc)
PAST = datetime(1971, 1, 1, tzinfo=timezone.utc)
CURSOR_NAMES = ("updated_since", "since", "modified_since", "modified_after", "changed_since", "updated_after",
                "updatedSince", "modifiedSince", "modifiedFrom", "updatedFrom", "lastModified", "from", "from_date",
                "fromDate", "tu_ngay", "tuNgay", "TuNgay")
UNTIL_NAMES = ("updated_until", "until", "modified_before", "modified_until", "changed_until", "updated_before",
               "updatedUntil", "modifiedBefore", "modifiedTo", "updatedTo", "to", "to_date", "toDate", "den_ngay",
               "denNgay", "DenNgay")
SINCE_SUFFIXES = ("__gte", "__gt", "_gte", "_from", "_since", "_after", "[gte]")  # filters on a record's own time
UNTIL_SUFFIXES = ("__lt", "__lte", "_lt", "_to", "_until", "_before", "[lt]")
SIZE_NAMES = ("limit", "page_size", "per_page", "pageSize", "perPage", "size", "take", "top", "max_results")
PAGE_NAMES = ("page", "page_number", "pageNumber", "page_no", "pageIndex")
OFFSET_NAMES = ("offset", "skip", "start")
TOTAL_PAGES_NAMES = ("total_pages", "totalPages", "pages", "page_count", "pageCount", "last_page")
TOTAL_NAMES = ("total", "total_count", "totalCount", "count", "total_records", "totalRecords", "totalElements")
TOKEN_FIELD = re.compile(r"(?i)^next_?(page_?)?(cursor|token)$|^(cursor|continuation_?token)$")
LINK_FIELD = re.compile(r"(?i)^(next|next_?link|next_?url|@odata\.nextLink)$")
DELETED = re.compile(r"(?i)(is_?)?(deleted|removed|da_?xoa|xoa|huy)")
UPDATED = re.compile(r"(?i)(updat|modif|chang|last|cap_?nhat)")
IDENTIFIER = re.compile(r"(?i)(_no|_id|id|_code|code|_number|_symbol|name|ten)$")
PERSONAL = re.compile(r"(?i)(personal_id|cccd|cmnd|full_?name|ho_?ten|birth|ngay_?sinh|address|dia_?chi|phone|"
                      r"email|holder_name|representative|so_?dien_?thoai)")
DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}")
TIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
TIME_SHAPES = (  # dates and times Vietnamese systems write otherwise than ISO 8601: (shape, type, strptime pattern)
    (re.compile(r"\d{2}/\d{2}/\d{4}"), "date", "%d/%m/%Y"),
    (re.compile(r"\d{2}-\d{2}-\d{4}"), "date", "%d-%m-%Y"),
    (re.compile(r"\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2}"), "timestamp", "%d/%m/%Y %H:%M:%S"),
    (re.compile(r"\d{2}/\d{2}/\d{4} \d{2}:\d{2}"), "timestamp", "%d/%m/%Y %H:%M"),
    (re.compile(r"(19|20)\d{12}"), "timestamp", "%Y%m%d%H%M%S"),  # the DVCQG's 20250815093000
)
LOCAL_ZONE = "Asia/Ho_Chi_Minh"  # the zone drafted for times a source writes without one
XSD_TYPES = {"string": "string", "normalizedString": "string", "token": "string", "anyURI": "string",
             "int": "integer", "integer": "integer", "long": "integer", "short": "integer", "byte": "integer",
             "nonNegativeInteger": "integer", "positiveInteger": "integer", "unsignedInt": "integer",
             "unsignedLong": "integer", "unsignedShort": "integer", "decimal": "float", "double": "float",
             "float": "float", "boolean": "boolean", "date": "date", "dateTime": "timestamp"}
PROBE_SIZE = 3
PAGE_SIZE = 500  # records a drafted pipeline asks for a page (less where the source caps its pages)
REQUIRED_AFTER = 100  # a field filled in every one of fewer sampled records is not yet said to be required


class DiscoverError(RuntimeError):
    """The system's answers do not say what a draft needs; the message says what to give instead."""


@dataclass
class ColumnGuess:
    """What the sample says of one field: its type, how often it was filled, how many values are not of it."""

    name: str
    type: str
    filled: int
    odd: int = 0
    declared: str | None = None  # the WSDL's type, for SOAP
    format: str | None = None  # a date or time not written ISO 8601: its strptime pattern
    timezone: str | None = None  # times written without a zone: the zone drafted for them
    written: str = ""  # a note on the two above

    def required(self, sampled: int) -> bool:
        """Filled in every sampled record, of a sample big enough to say so (REQUIRED_AFTER)."""
        return self.filled == sampled >= REQUIRED_AFTER

    def spec(self) -> dict[str, Any]:
        """The column's type as the catalog writes it: `{type: date, format: '%d/%m/%Y'}`."""
        return {"type": self.type, **({"format": self.format} if self.format else {}),
                **({"timezone": self.timezone} if self.timezone else {})}

    def kind(self, plural: str = "") -> str:
        """The type as a finding names it: `date written %d/%m/%Y`, `timestamps without a zone` (plural "s")."""
        return self.type + plural + (f" written {self.format}" if self.format else
                                     " without a zone" if self.timezone else "")


@dataclass
class Draft:
    """A dataset and a pipeline drafted from a system's answers, and what each guess rests on."""

    system: str
    operation: str
    dataset: str
    pipeline: str
    title: str
    columns: dict[str, ColumnGuess]
    sampled: int
    key: list[str]
    cursor_field: str | None
    checks: list[dict[str, Any]]
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    personal: list[str] = field(default_factory=list)
    delete_field: str | None = None
    owner: str = ""
    share: bool = False  # draft catalog/sharing.yaml's entry too (restricted, personal columns protected)

    def dataset_block(self) -> dict[str, Any]:
        block: dict[str, Any] = {"title": self.title, "key": list(self.key)}
        if self.cursor_field:
            block["cursor_field"] = self.cursor_field
        if self.delete_field:
            block["delete_field"] = self.delete_field
        block["columns"] = {name: {**c.spec(), "required": True}
                            if c.required(self.sampled) or name in self.key or name == self.cursor_field
                            else c.spec() for name, c in self.columns.items()}
        if self.checks:
            block["checks"] = [dict(c) for c in self.checks]
        return block

    def pipeline_block(self) -> dict[str, Any]:
        return {"title": f"{self.dataset.replace('_', ' ').capitalize()} records changed in the {self.system} system",
                "source": dict(self.source),
                "dataset": self.dataset, "schedule": "@daily", "freshness": {"warn_after": "30h", "error_after": "3d"},
                **({"lookback_s": 3600} if self.source.get("cursor_param") else {}), "tags": [self.system]}

    def sharing_block(self) -> dict[str, Any]:
        """Restricted; every column shared; each personal-looking column protected (a personal ID pseudonymised so
        agencies can still join on it, a name masked, anything else withheld); filterable: the columns that are
        not personal and are a time, a flag, a code or one of a few values."""
        ruled = {c["column"] for c in self.checks if c["rule"] in ("enum", "commune_code", "pattern") and "column" in c}
        filterable = [n for n, c in self.columns.items() if n not in self.personal
                      and (c.type in ("date", "timestamp", "boolean") or n in ruled or n in self.key)]
        return {"description": f"{self.title}. Drafted by lgsp discover: say what it is for and who may ask.",
                "owner": self.owner or self.system, "licence": "restricted-government-use", "access": "restricted",
                "columns": list(self.columns), "filterable": filterable,
                "personal": {n: _policy(n, self) for n in self.personal}}

    def dataset_spec(self) -> DatasetSpec:
        return DatasetSpec(name=self.dataset, **self.dataset_block())

    def pipeline_spec(self) -> PipelineSpec:
        return PipelineSpec(name=self.pipeline, **self.pipeline_block())

    def yaml_blocks(self) -> dict[str, str]:
        """{catalog file: text to append to it}, as docs/adding-a-system.md writes them."""
        blocks = {"datasets.yaml": _block(self.dataset, self.dataset_block()),
                  "pipelines.yaml": _block(self.pipeline, self.pipeline_block())}
        if self.share:
            blocks["sharing.yaml"] = _block(self.dataset, self.sharing_block())
        return blocks

    def text(self) -> str:
        """The draft to read: what was found, then each block under the name of its catalog file."""
        lines = [f"# lgsp discover {self.system} {self.operation}: {self.sampled} record(s) sampled"]
        lines += [f"#  - {note}" for note in self.notes]
        for name, block in self.yaml_blocks().items():
            lines += ["", f"# catalog/{name}", block.rstrip("\n")]
        return "\n".join(lines) + "\n"


def _policy(column: str, draft: Draft) -> str:
    """pseudonym for a personal ID (a join key kept), mask for a name, withhold for the rest (a date, an address)."""
    if re.search(r"(?i)personal_id|cccd|cmnd|so_?dinh_?danh", column) or any(
            c["rule"] == "cccd" and c["column"] == column for c in draft.checks):
        return "pseudonym"
    if re.search(r"(?i)name|ho_?ten|representative", column) and draft.columns[column].type == "string":
        return "mask"
    return "withhold"


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True,
                          width=10_000).strip().removesuffix("...").strip()


def _block(name: str, body: dict[str, Any]) -> str:
    """`  name:` then its fields, nested mappings one line each (the catalog's own style)."""
    lines = [f"  {name}:"]
    for key, value in body.items():
        if isinstance(value, dict) and key in ("columns", "source") and value:
            lines.append(f"    {key}:")
            lines += [f"      {k}: {_flow(v)}" for k, v in value.items()]
        elif key == "checks":
            lines.append("    checks:")
            lines += [f"      - {_flow(v)}" for v in value]
        else:
            lines.append(f"    {key}: {_flow(value)}")
    return "\n".join(lines) + "\n"


# --- values and columns --------------------------------------------------------------------------------------------


def value_kind(value: Any) -> str | None:
    """The column type a sampled value has (None for an absent value, "nested" for an object or array)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, date):
        return "date"
    if isinstance(value, (dict, list)):
        return "nested"
    if hasattr(value, "as_tuple"):  # a Decimal (SOAP xsd:decimal)
        return "float"
    text = str(value)
    if DATE_TEXT.fullmatch(text):
        return "date" if _parses(date.fromisoformat, text) else "string"
    if TIME_TEXT.fullmatch(text):
        return "timestamp" if _parses(datetime.fromisoformat, text.replace(" ", "T")) else "string"
    shape = time_shape(text)
    return shape[0] if shape else "string"


def time_shape(text: str) -> tuple[str, str] | None:
    """(date or timestamp, its strptime pattern) of a date or time not written ISO 8601, if it is one (day first
    when the text fits both orders, as Vietnamese systems write them)."""
    for pattern, kind, written in TIME_SHAPES:
        if pattern.fullmatch(text):
            for form in (written, _month_first(written)):
                if _parses(lambda t: datetime.strptime(t, form), text):
                    return kind, form
    return None


def _month_first(form: str) -> str:
    return form.replace("%d/%m", "%m/%d").replace("%d-%m", "%m-%d")


def time_written(column: ColumnGuess, values: list[Any]) -> None:
    """Set a date or timestamp column's `format` (the pattern that reads most of its text values; day before month
    unless the values say otherwise), `timezone` (LOCAL_ZONE for times written without a zone) and a note on them."""
    if column.type not in ("date", "timestamp"):
        return
    texts = [v for v in values if isinstance(v, str) and v]
    forms = {shape[1]: None for t in texts if not DATE_TEXT.match(t) and (shape := time_shape(t))}
    note = None
    if forms:
        candidates = list(dict.fromkeys(f for form in forms for f in (form, _month_first(form))))
        reads = {f: sum(_parses(lambda t: datetime.strptime(t, f), t) for t in texts) for f in candidates}
        best = max(candidates, key=lambda f: (reads[f], f.find("%d") < f.find("%m")))
        column.format = best
        column.odd = len(texts) - reads[best] + sum(1 for v in values if v not in (None, "") and not isinstance(
            v, (str, date)))
        order = (" (day first: no value says which comes first)" if ("%d/%m" in best or "%d-%m" in best)
                 and reads.get(_month_first(best)) == reads[best] else "")
        note = f"column {column.name}: {column.type}s written {best}{order}"
    naive = [v for v in values if (isinstance(v, str) and TIME_TEXT.fullmatch(v) and not ZONED_TEXT.search(v))
             or (isinstance(v, datetime) and v.tzinfo is None)]
    if column.type == "timestamp" and (naive or column.format and "%z" not in column.format):
        column.timezone = LOCAL_ZONE
        note = ((note + "; ") if note else f"column {column.name}: ") + (
            f"times written without a zone, read as {LOCAL_ZONE}'s (+07:00): check the system's")
    column.written = note or ""


def _parses(parse: Any, text: str) -> bool:
    try:
        parse(text)
        return True
    except ValueError:
        return False


def guess_columns(records: list[dict[str, Any]], declared: dict[str, str] | None = None
                  ) -> tuple[dict[str, ColumnGuess], list[str]]:
    """Each flat field's guess, in the order fields first appear; and the nested fields' names."""
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    columns: dict[str, ColumnGuess] = {}
    nested: list[str] = []
    for name in names:
        values = [r.get(name) for r in records]
        kinds = Counter(k for k in map(value_kind, values) if k is not None)
        filled = sum(kinds.values())
        if kinds.get("nested"):
            nested.append(name)
            continue
        if kinds.keys() <= {"integer", "float"} and kinds.get("float"):
            kinds = Counter({"float": filled})
        kind = kinds.most_common(1)[0][0] if kinds else "string"
        if declared and name in declared:
            kind = declared[name]
        elif kinds and kinds[kind] < HOLDS * filled:
            kind = "string"  # no type holds: text keeps every value
        odd = filled - (kinds[kind] if kind != "string" else filled)
        columns[name] = ColumnGuess(name, kind, filled, odd, (declared or {}).get(name))
        time_written(columns[name], values)
    return columns, nested


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, date)) else orjson.dumps(value, default=str)


def guess_key(records: list[dict[str, Any]], columns: dict[str, ColumnGuess]) -> tuple[list[str], str]:
    """The first column filled and unique in every sampled record (else two), and why."""
    n = len(records)
    candidates = [c for c in columns.values() if c.filled == n and c.type in ("string", "integer", "date", "timestamp")]
    for column in candidates:
        if len({_hashable(r.get(column.name)) for r in records}) == n:
            return [column.name], f"key {column.name}: filled and unique in all {n} sampled records"
    for a, b in itertools.combinations([c.name for c in candidates], 2):
        if len({(_hashable(r.get(a)), _hashable(r.get(b))) for r in records}) == n:
            return [a, b], f"key [{a}, {b}]: no column is unique in the sample; the pair is (check it is the key)"
    raise DiscoverError(f"no column (nor pair) is filled and unique in the {n} sampled records: "
                        "the answer has no key lgsp can see; name it with --key")


# --- row rules -----------------------------------------------------------------------------------------------------


def _share(frame: Any, rule: str, params: dict[str, Any], column: str) -> tuple[int, int]:
    """(values the rule passes, values filled) of `column` when `rule` runs on the typed sample."""
    from quality.rules import RULES

    filled = frame[column].notna().to_numpy()
    try:
        passed = RULES[rule].check(frame, **params).to_numpy(dtype=bool)
    except (TypeError, ValueError, AttributeError):
        return 0, int(filled.sum())
    return int((passed & filled).sum()), int(filled.sum())


def _shape(text: str) -> tuple[tuple[str, int], ...]:
    """"GD4370123456789" -> (("[A-Z]", 2), ("[0-9]", 13)): runs of letters, digits and literal characters."""
    runs: list[list[Any]] = []
    for char in text:
        cls = "[A-Z]" if "A" <= char <= "Z" else "[a-z]" if "a" <= char <= "z" else "[0-9]" if char.isdigit() \
            else "\\" + char if char in ".^$*+?{}[]\\|()" else char
        if runs and runs[-1][0] == cls:
            runs[-1][1] += 1
        else:
            runs.append([cls, 1])
    return tuple((c, n) for c, n in runs)


def shape_pattern(values: list[str]) -> str | None:
    """A regular expression every value of one shape matches (run lengths as ranges), if 95% share one shape."""
    shapes = Counter(tuple(c for c, _ in _shape(v)) for v in values)
    if not shapes:
        return None
    common, count = shapes.most_common(1)[0]
    if count < HOLDS * len(values) or len(common) > 8:
        return None
    lengths = [[n for _, n in _shape(v)] for v in values if tuple(c for c, _ in _shape(v)) == common]
    parts = []
    for i, cls in enumerate(common):
        low, high = min(ln[i] for ln in lengths), max(ln[i] for ln in lengths)
        repeat = "" if low == high == 1 else f"{{{low}}}" if low == high else f"{{{low},{high}}}"
        parts.append(cls + repeat if cls.startswith("[") else cls * low if low == high else f"(?:{cls}){repeat}")
    return "".join(parts)


def guess_checks(records: list[dict[str, Any]], columns: dict[str, ColumnGuess], key: list[str],
                 cursor_field: str | None, name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Row rules that hold on the typed sample (each run as a sync runs it), and a note on each."""
    from schemas.arrow import coerce

    if not records:
        return [], []
    probe = DatasetSpec(name=name, title=name, key=key, columns={c.name: c.spec() for c in columns.values()})
    frame = coerce(records, probe).frame
    checks: list[dict[str, Any]] = []
    notes: list[str] = []

    def propose(check: dict[str, Any], column: str) -> bool:
        params = {k: v for k, v in check.items() if k != "rule"}
        passed, filled = _share(frame, check["rule"], params, column)
        if filled == 0 or passed < HOLDS * filled:
            return False
        checks.append(check)
        if passed < filled:
            notes.append(f"rule {check['rule']} on {column}: {filled - passed} of {filled} sampled values fail it "
                         "(a sync would quarantine them)")
        return True

    strings = [c.name for c in columns.values() if c.type == "string" and c.filled]
    days = [c.name for c in columns.values() if c.type == "date"]
    sexes = [s for s in strings if set(frame[s].dropna().unique()) <= {"male", "female"}]
    for column in strings:
        values = [str(v) for v in frame[column].dropna()]
        if all(len(v) == 12 and v.isdigit() for v in values[:50]):
            options = [{"rule": "cccd", "column": column, "sex": s, "birth_date": b} for s in sexes for b in days]
            options.sort(key=lambda o: -_share(frame, "cccd", {k: v for k, v in o.items() if k != "rule"}, column)[0])
            if (options and propose(options[0], column)) or propose(
                    {"rule": "pattern", "column": column, "pattern": "[0-9]{12}"}, column):
                continue
        if all(len(v) == 5 and v.isdigit() for v in values[:50]) and propose(
                {"rule": "commune_code", "column": column}, column):
            continue
        if any("@" in v for v in values[:50]) and propose({"rule": "email", "column": column}, column):
            continue
        if values and values[0].startswith("0") and propose({"rule": "phone_vn", "column": column}, column):
            continue
        if re.search(r"(?i)tax|mst|ma_?so_?thue", column) and propose({"rule": "tax_code", "column": column}, column):
            continue
        seen = Counter(values)
        if 1 < len(seen) <= 10 and min(seen.values()) >= 3 and len(values) >= 10 * len(seen) \
                and not IDENTIFIER.search(column):  # codes and names are open sets, not a list of values
            propose({"rule": "enum", "column": column, "values": sorted(seen)}, column)
            continue
        if column in key or IDENTIFIER.search(column):
            pattern = shape_pattern(values)
            if pattern and propose({"rule": "pattern", "column": column, "pattern": pattern}, column):
                continue
    for column in (c.name for c in columns.values() if c.type in ("integer", "float") and c.filled):
        values = frame[column].dropna()
        if len(values) and values.min() >= 0 and column not in key:
            propose({"rule": "range", "column": column, "min": 0}, column)
    checks += _orderings(frame, columns, cursor_field)
    return checks, notes


def _orderings(frame: Any, columns: dict[str, ColumnGuess], cursor_field: str | None) -> list[dict[str, Any]]:
    """`ordered` for each pair of dates or times that holds on 99% of the sample (both filled in 10 records
    at least, the first earlier in some), leaving out the cursor field and a pair implied by two others
    through an always-filled column."""
    from quality.rules import RULES

    times = [c.name for c in columns.values()
             if c.type in ("date", "timestamp") and c.name != cursor_field and not UPDATED.search(c.name)]
    before: set[tuple[str, str]] = set()
    for a, b in itertools.permutations(times, 2):
        both = frame[a].notna() & frame[b].notna()
        if both.sum() < 10:
            continue
        passed = RULES["ordered"].check(frame[both], columns=[a, b]).to_numpy(dtype=bool)
        early = RULES["ordered"].check(frame[both], columns=[b, a]).to_numpy(dtype=bool)
        if passed.mean() >= ORDER_HOLDS and not early.all():
            before.add((a, b))
    always = {c for c in times if columns[c].filled == len(frame)}  # an empty middle value implies nothing
    implied = {(a, b) for a, b in before for c in always if (a, c) in before and (c, b) in before}
    return [{"rule": "ordered", "columns": [a, b]} for a in times for b in times if (a, b) in before - implied]


# --- asking the system ---------------------------------------------------------------------------------------------


class Asker:
    """Calls one operation of a system through its transport; a refused call is an answer too (None)."""

    def __init__(self, system: SystemSpec, operation: str, method: str, base: dict[str, Any]) -> None:
        from connectors import open_transport

        self.system, self.operation, self.base = system, operation, dict(base)
        self.source = SourceSpec(system=system.name, operation=operation, method=method)  # type: ignore[arg-type]
        self.transport = open_transport(system, self.source)
        self.calls = 0

    def call(self, params: dict[str, Any], refused_ok: bool = True) -> dict[str, Any] | None:
        """The answer to one request, retried as a sync retries it; None if the system refused it."""
        self.calls += 1
        request = {**self.base, **params}
        try:
            return call_with_retry(lambda: self.transport.call(dict(request)), self.system.retry, self.system.name,
                                   self.operation)
        except RetriesExhausted as exc:
            raise DiscoverError(f"{exc}: nothing was drafted; try again when the system answers") from None
        except (FatalError, TypeError, ValueError) as exc:  # a parameter it does not take, a malformed answer
            if not refused_ok:
                said = f"{exc}" if isinstance(exc, FatalError) else f"{self.system.name} {self.operation}: {exc}"
                raise DiscoverError(f"{said}; nothing was drafted: check the operation, or give the parameters it "
                                    "needs with --param NAME=VALUE") from None
            return None

    def close(self) -> None:
        self.transport.close()


def records_path(answer: dict[str, Any], soap: bool = False) -> str | None:
    """The dotted path of the answer's largest array of objects (SOAP: an array's wrapper element, as
    `extract_records` reads it: `items` for `items: {Citizen: [...]}`)."""
    found: list[tuple[int, str]] = []

    def walk(node: dict[str, Any], path: str, depth: int) -> None:
        for name, value in node.items():
            here = f"{path}.{name}" if path else name
            if soap and isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
                value = next(iter(value.values()))
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                found.append((len(value), here))
            elif isinstance(value, dict) and depth < 2:
                walk(value, here, depth + 1)

    walk(answer, "", 0)
    return max(found, key=lambda f: f[0])[1] if found else None


def _scalars(answer: dict[str, Any], path: str = "", depth: int = 0) -> dict[str, Any]:
    """Every scalar of the answer by dotted path (two levels deep), the records left out."""
    out: dict[str, Any] = {}
    for name, value in answer.items():
        here = f"{path}.{name}" if path else name
        if isinstance(value, dict) and depth < 2:
            out.update(_scalars(value, here, depth + 1))
        elif not isinstance(value, (list, dict)):
            out[here] = value
    return out


def _records(answer: dict[str, Any] | None, path: str) -> list[dict[str, Any]] | None:
    if answer is None:
        return None
    try:
        return [dict(r) for r in extract_records(answer, path)]
    except TypeError:
        return None


def _last(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _first_named(scalars: dict[str, Any], names: tuple[str, ...], kind: type = int) -> str | None:
    for name in names:
        for path, value in scalars.items():
            if _last(path) == name and isinstance(value, kind) and not isinstance(value, bool):
                return path
    return None


def _size_param(ask: Asker, path: str, first: int, names: tuple[str, ...]) -> str | None:
    """The parameter that makes the answer hold PROBE_SIZE records."""
    if first <= PROBE_SIZE:
        return None
    for name in names:
        records = _records(ask.call({name: PROBE_SIZE}), path)
        if records is not None and len(records) == PROBE_SIZE:
            return name
    return None


def _differs(a: list[dict[str, Any]] | None, b: list[dict[str, Any]] | None) -> bool:
    if not a or not b:
        return False
    seen = {orjson.dumps(r, default=str, option=orjson.OPT_SORT_KEYS) for r in a}
    return not any(orjson.dumps(r, default=str, option=orjson.OPT_SORT_KEYS) in seen for r in b)


def find_paging(ask: Asker, path: str, answer: dict[str, Any], inputs: list[str] | None) -> dict[str, Any]:
    """The paginator of the operation's answers, each of its parameters confirmed by a probe."""
    scalars, first = _scalars(answer), _records(answer, path) or []
    names = tuple(inputs) if inputs is not None else ()
    size_names = tuple(n for n in names if n in SIZE_NAMES or "size" in n.lower()) if inputs is not None else SIZE_NAMES
    link = next((p for p, v in scalars.items() if LINK_FIELD.match(_last(p)) and isinstance(v, str) and v), None)
    token = next((p for p, v in scalars.items() if TOKEN_FIELD.match(_last(p)) and v not in (None, "")), None)
    pages = _first_named(scalars, TOTAL_PAGES_NAMES)
    size = _size_param(ask, path, len(first), size_names)
    small = ask.call({size: PROBE_SIZE}) if size else answer
    small_records = _records(small, path) or []
    if link:
        return {"type": "next_link", "next_field": link, "size_param": size, "page_size": 200}
    if token:
        value = dig(small or {}, token) or dig(answer, token)
        stem = re.sub(r"(?i)^next_?", "", _last(token))
        guesses = [n for n in names if "token" in n.lower() or "cursor" in n.lower()] if inputs is not None else [
            stem, stem[:1].lower() + stem[1:], re.sub(r"(?<!^)(?=[A-Z])", "_", stem).lower(), "cursor", "page_token",
            "token", "continuation_token"]
        for name in dict.fromkeys(guesses):
            if value and _differs(small_records, _records(ask.call({size: PROBE_SIZE, name: value} if size
                                                                  else {name: value}), path)):
                return {"type": "cursor", "token_field": token, "token_param": name, "size_param": size,
                        "page_size": 500}
        raise DiscoverError(f"the answer carries a next-page token ({token}) but no parameter tried "
                            f"({', '.join(dict.fromkeys(guesses))}) takes it back: name the paginator in the draft")
    echoed = {_last(p) for p in scalars}
    offsets = [n for n in names if n in OFFSET_NAMES] if inputs is not None else \
        sorted(OFFSET_NAMES, key=lambda n: n not in echoed)  # the one the answer names first
    page = next((n for n in (names or PAGE_NAMES) if n in PAGE_NAMES), None)
    for offset in offsets if size else []:
        moved = ask.call({size: PROBE_SIZE, offset: PROBE_SIZE})
        if _differs(small_records, _records(moved, path)):
            total = _first_named(scalars, TOTAL_NAMES)
            return {"type": "offset", "offset_param": offset, "limit_param": size,
                    "limit": _page_cap(ask, path, size, lambda n, o=offset: {o: n}), "total_field": total}
    if size:
        for name in ([page] if page else []) + [n for n in PAGE_NAMES if n != page and inputs is None]:
            start = scalars.get(name, 1) if isinstance(scalars.get(name), int) else 1
            moved = ask.call({size: PROBE_SIZE, name: start + 1})
            if _differs(small_records, _records(moved, path)):
                return {"type": "page_number", "page_param": name, "size_param": size,
                        "page_size": _page_cap(ask, path, size, lambda n, p=name, s=start: {p: s + 1}),
                        "total_pages_field": pages, "first_page": start}
    return {"type": "single"}


def _page_cap(ask: Asker, path: str, size: str, following: Any) -> int:
    """The page size to ask for: PAGE_SIZE, or less if the source answers fewer records than asked while more
    follow (its own cap: asked for more, it would give a short page that a paginator without a total takes for
    the last)."""
    got = _records(ask.call({size: PAGE_SIZE}), path)
    if not got or len(got) >= PAGE_SIZE:
        return PAGE_SIZE
    more = _records(ask.call({size: len(got), **following(len(got))}), path)
    return len(got) if more else PAGE_SIZE


Written = tuple[str, "str | None"]  # how a cursor is written in a request: (cursor_format, cursor_timezone)
ISO: Written = ("iso", None)


def own_forms(records: list[dict[str, Any]]) -> list[Written]:
    """The forms the records' own times are written in, as cursor formats (after ISO, ISO Z and the DVCQG's): a
    source that writes `01/08/2025 09:30:00`, or local times without a zone, may want its filter written so."""
    forms: dict[Written, None] = {}
    for value in (v for r in records[:20] for v in r.values() if isinstance(v, str)):
        if TIME_TEXT.fullmatch(value) and not ZONED_TEXT.search(value):
            forms[("%Y-%m-%d %H:%M:%S" if " " in value else "%Y-%m-%dT%H:%M:%S", LOCAL_ZONE)] = None
        elif (shape := time_shape(value)) and shape[1] != "%Y%m%d%H%M%S":  # that one is `dvcqg`
            forms[(shape[1], LOCAL_ZONE)] = None
    return [("iso", None), ("iso_z", None), ("dvcqg", None), *forms]


def find_cursor(ask: Asker, path: str, first: list[dict[str, Any]],
                inputs: dict[str, str] | None) -> tuple[str | None, str | None, Written]:
    """(cursor param, until param, how they are written): a far-future cursor, or a far-past until, empties the
    answer. Each is written as ISO, ISO Z, the DVCQG's form, then the records' own forms, until one is taken."""
    if not first:
        return None, None, ISO
    if inputs is not None:
        cursor_names = tuple(n for n, t in inputs.items() if t == "timestamp")
        until_names = cursor_names
    else:  # the usual names, then filters on the records' own times (`updated_at__gte`, `updated_at_from`, ...)
        times = sorted(dict.fromkeys(k for r in first[:20] for k, v in r.items() if value_kind(v) in
                                     ("timestamp", "date")), key=lambda n: not UPDATED.search(n))
        cursor_names = CURSOR_NAMES + tuple(f"{c}{s}" for c in times for s in SINCE_SUFFIXES)
        until_names = UNTIL_NAMES + tuple(f"{c}{s}" for c in times for s in UNTIL_SUFFIXES)

    forms = own_forms(first)

    def empties(name: str, when: datetime) -> Written | None:
        for written in forms:
            records = _records(ask.call({name: format_cursor(when, *written)}), path)
            if records is not None:
                return written if not records else None
        return None

    cursor, written = None, ISO
    for name in cursor_names:
        found = empties(name, FUTURE)
        if found:
            cursor, written = name, found
            break
    until = None
    if cursor:  # the until filter on the cursor's own column first (`updated_at__lt` for `updated_at__gte`)
        stem = next((cursor[:-len(x)] for x in SINCE_SUFFIXES if cursor.endswith(x)), None)
        until_names = tuple(sorted(until_names, key=lambda n: not (stem and n.startswith(stem))))
    for name in until_names:
        if name != cursor and empties(name, PAST):
            until = name
            break
    return cursor, until, written


def cursor_column(ask: Asker, path: str, columns: dict[str, ColumnGuess], sample: list[dict[str, Any]],
                  cursor: str | None, written: Written, renames: dict[str, str]) -> tuple[str | None, str]:
    """The timestamp column the cursor parameter filters on, and why it is thought so."""
    import pandas as pd

    from schemas.arrow import parse_times

    times = sorted((c.name for c in columns.values() if c.type == "timestamp" and c.filled == len(sample)),
                   key=lambda n: not UPDATED.search(n))
    if not times:
        return None, "no timestamp column is always filled: the draft has no cursor_field (every sync is full)"
    if cursor is None:
        return times[0], (f"cursor_field {times[0]}: by its name; no cursor parameter was found, so each sync "
                          "reads everything (add cursor_param to the source if the system has one)")
    def parsed(records: list[dict[str, Any]], name: str) -> pd.Series:
        return parse_times(pd.Series([r.get(name) for r in records], dtype=object), ColumnSpec(**columns[name].spec()))

    for name in times:
        stamps = parsed(sample, name).dropna().sort_values()
        if stamps.empty:
            continue
        middle = stamps.iloc[len(stamps) // 2].to_pydatetime()
        answered = _records(ask.call({cursor: format_cursor(middle, *written)}), path)
        if not answered:
            continue
        answered = [{renames.get(k, k): v for k, v in r.items()} for r in answered]
        if (parsed(answered, name) >= middle).all():
            return name, (f"cursor_field {name}: asked from its middle sampled value ({middle.isoformat()}), "
                          f"the {len(answered)} record(s) answered are all at or after it")
    return times[0], f"cursor_field {times[0]}: by its name; no column was confirmed by asking with {cursor}"


def _soap_operations(ask: Asker) -> dict[str, Any]:
    """The operations of the system's WSDL (every service and port), by name."""
    client = ask.transport._connect()  # type: ignore[attr-defined]
    return {name: operation for service in client.wsdl.services.values() for port in service.ports.values()
            for name, operation in port.binding._operations.items()}


def soap_signature(ask: Asker) -> tuple[dict[str, str], dict[str, str]]:
    """(the operation's arguments and their column types, its records' declared column types)."""
    operations = _soap_operations(ask)
    operation = operations.get(ask.operation)
    if operation is None:
        raise DiscoverError(f"{ask.system.name} has no operation {ask.operation!r} "
                            f"(its WSDL has: {', '.join(sorted(operations))})")
    inputs = {name: XSD_TYPES.get(getattr(element.type, "name", "") or "", "string")
              for name, element in operation.input.body.type.elements}
    return inputs, _declared_records(operation.output.body.type)


def _declared_records(xsd_type: Any, depth: int = 0) -> dict[str, str]:
    """The column types of the first repeated element of simple-typed children under `xsd_type`."""
    for _, element in getattr(xsd_type, "elements", []):
        child = element.type
        simple = [(n, e) for n, e in getattr(child, "elements", []) if not getattr(e.type, "elements", None)]
        if element.max_occurs != 1 and simple:
            return {n: XSD_TYPES.get(getattr(e.type, "name", "") or "", "string") for n, e in simple}
        if depth < 4:
            found = _declared_records(child, depth + 1)
            if found:
                return found
    return {}


OPENAPI_PATHS = ("/openapi.json", "/v3/api-docs", "/swagger.json", "/v2/api-docs", "/api-docs")


def list_operations(system: SystemSpec) -> list[str]:
    """A system's operations: a SOAP system's with their arguments (`ListChangedCitizens(since: xsd:dateTime, ...)`),
    a REST system's from the OpenAPI document it serves (`GET /api/v1/items  summary  (query: since, limit)`)."""
    if system.protocol == "soap":
        ask = Asker(system, "", "POST", {})
        try:
            return [f"{name}({op.input.signature()})" for name, op in _soap_operations(ask).items()]
        finally:
            ask.close()
    for where in OPENAPI_PATHS:
        ask = Asker(system, where, "GET", {})
        try:
            document = ask.call({})
        finally:
            ask.close()
        if isinstance(document, dict) and isinstance(document.get("paths"), dict):
            return _openapi_operations(document)
    raise DiscoverError(f"{system.name} serves no OpenAPI document (asked {', '.join(OPENAPI_PATHS)}): name the path "
                        f"to ask (e.g. `lgsp discover {system.name} /api/v1/items`)")


def _openapi_operations(document: dict[str, Any]) -> list[str]:
    lines = []
    for path, item in sorted(document["paths"].items()):
        for method, operation in item.items():
            if method not in ("get", "post") or not isinstance(operation, dict):
                continue
            query = [p.get("name") for p in [*item.get("parameters", []), *operation.get("parameters", [])]
                     if isinstance(p, dict) and p.get("in") == "query"]
            said = operation.get("summary") or operation.get("operationId") or ""
            lines.append(f"{method.upper()} {path}  {said}" + (f"  (query: {', '.join(query)})" if query else ""))
    return lines


# --- the whole draft -----------------------------------------------------------------------------------------------


def _singular(text: str) -> str:
    word = re.sub(r"[^a-z0-9]+", "_", re.sub(r"(?<!^)(?=[A-Z])", "_", text).lower()).strip("_")
    word = re.sub(r"^(list_|get_)?(changed_)?", "", word).split("_v")[0] or "record"
    return word[:-3] + "y" if word.endswith("ies") else word[:-1] if word.endswith("s") else word


COLUMN_NAME = re.compile(r"[a-z][a-z0-9_]*")


def column_names(fields: Any) -> dict[str, str]:
    """{source field: column} for each field that is not already a column name: `MaTTHC` -> `ma_tthc`,
    `ThoiHanGiaiQuyet` -> `thoi_han_giai_quyet`, `ngàyCấp` -> `ngay_cap`."""
    import unicodedata

    names = list(dict.fromkeys(fields))
    taken = {n for n in names if COLUMN_NAME.fullmatch(n)}
    renames = {}
    for name in names:
        if name in taken:
            continue
        plain = unicodedata.normalize("NFKD", name.replace("đ", "d").replace("Đ", "D"))
        plain = "".join(c for c in plain if not unicodedata.combining(c))
        words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", plain)
        column = re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_") or "field"
        column = column if column[0].isalpha() else f"f_{column}"
        while column in taken:  # `Name` beside `name`
            column += "_2"
        taken.add(column)
        renames[name] = column
    return renames


def _pipeline_name(system: str, dataset: str) -> str:
    """`land_parcels`, `civil_servants` (not `civil_servants_civil_servants`), `civil_status_events`."""
    if dataset.startswith(system.rstrip("s")) or system.startswith(dataset):
        return f"{dataset}s"
    return f"{system}_{dataset}s"


def discover(catalog: Catalog, system_name: str, operation: str, *, dataset: str | None = None,
             pipeline: str | None = None, sample: int = 1000, params: dict[str, Any] | None = None,
             method: str = "GET", records_field: str | None = None, share: bool = False) -> Draft:
    """Ask `system_name`'s `operation` and draft its dataset and pipeline (see the module's docstring)."""
    system = catalog.systems.get(system_name)
    if system is None:
        raise DiscoverError(f"no system {system_name!r} in catalog/systems.yaml: declare it first (its endpoint, "
                            "auth and secret), see docs/adding-a-system.md; "
                            f"known: {', '.join(sorted(catalog.systems))}")
    if system.protocol not in ("rest", "soap"):
        raise DiscoverError(f"{system_name} is a {system.protocol} system: discover asks REST and SOAP systems")
    params = dict(params or {})
    words = [p for p in operation.strip("/").split("/") if p and not re.fullmatch(r"v\d+|api", p)]
    name = dataset or _singular(words[-1] if words else system_name)
    ask = Asker(system, operation, "POST" if system.protocol == "soap" else method, params)
    try:
        draft = _discover(ask, system, operation, name, pipeline or _pipeline_name(system_name, name), sample,
                          records_field)
    finally:
        ask.close()
    draft.owner, draft.share = system.owner, share
    if share and draft.personal:
        draft.notes.append("sharing: restricted; " + ", ".join(f"{c} {_policy(c, draft)}" for c in draft.personal)
                           + " unless a grant names the column (--personal)")
    return draft


def _discover(ask: Asker, system: SystemSpec, operation: str, name: str, pipeline: str, sample: int,
              records_field: str | None) -> Draft:
    inputs, declared = soap_signature(ask) if system.protocol == "soap" else (None, None)
    notes: list[str] = []
    answer = ask.call({}, refused_ok=False) or {}
    path = records_field or records_path(answer, soap=system.protocol == "soap")
    if path is None:
        raise DiscoverError(f"{system.name} {operation} answered with no array of records "
                            f"(its fields: {', '.join(sorted(_scalars(answer))) or 'none'}): give parameters that "
                            "select some records (--param NAME=VALUE) or name the field (--records-field)")
    first = _records(answer, path) or []
    renames = column_names(k for r in first for k in r)
    paginator = find_paging(ask, path, answer, list(inputs) if inputs is not None else None)
    cursor, until, written = find_cursor(ask, path, first, inputs)
    scalars = _scalars(answer)
    total = _first_named(scalars, TOTAL_NAMES)
    if total and cursor:
        emptied = ask.call({cursor: format_cursor(FUTURE, *written)})
        if emptied is None or dig(emptied, total) != 0:
            total = None  # a count that does not follow the window is not the window's count
    source: dict[str, Any] = {"system": system.name, "operation": operation}
    if ask.source.method == "POST" and system.protocol == "rest":
        source["method"] = "POST"
    if ask.base:
        source["params"] = dict(ask.base)
    source |= {k: v for k, v in (("cursor_param", cursor), ("until_param", until)) if v}
    if written != ISO:
        source["cursor_format"] = written[0]
    if written[1]:
        source["cursor_timezone"] = written[1]
    source["records_field"] = path
    if renames:
        source["fields"] = renames
    source["paginator"] = {k: v for k, v in paginator.items() if v is not None}
    if total:
        source["total_field"] = total
    notes.append(f"paging: {_said_paging(paginator)}")
    try:
        records, pages = _sample(system, source, paginator, sample, notes)
    except DiscoverError:
        raise
    except (ConnectorError, RuntimeError) as exc:  # the sync's own paging refused the pages (a loop, an error)
        raise DiscoverError(f"reading the sample: {exc}") from None
    late = column_names(k for r in records for k in r)  # a field only later pages had
    if late:
        renames |= late
        source["fields"] = renames
        records = [{late.get(k, k): v for k, v in r.items()} for r in records]
    if renames:
        notes.append("fields: " + ", ".join(f"{a} -> {b}" for a, b in renames.items())
                     + " (source names renamed to columns: lower case, words joined by _)")
    declared = {renames.get(k, k): v for k, v in declared.items()} if declared is not None else None
    columns, nested = guess_columns(records, declared)
    if not columns:
        raise DiscoverError(f"{system.name} {operation}: the {len(records)} sampled record(s) have no fields")
    key, why_key = guess_key(records, columns)
    deleted = next((c.name for c in columns.values() if c.type == "boolean" and DELETED.fullmatch(c.name)
                    and c.name not in key), None)
    if deleted:
        notes.append(f"delete_field {deleted}: a record the source marks so is deleted here (history: its version "
                     "closed); check that is what it means")
    cursor_field, why_cursor = cursor_column(ask, path, columns, records, cursor, written, renames)
    checks, check_notes = guess_checks(records, columns, key, cursor_field, name)
    notes += [why_key, why_cursor]
    form = "" if written == ISO else f", written {written[0]}" + (f" in {written[1]}'s time" if written[1] else "")
    notes += [f"cursor: {cursor} (a far-future value{form} empties the answer)" if cursor else
              "cursor: no parameter tried filters the answer by time; each sync reads everything"]
    if until:
        notes.append(f"until: {until} (a far-past value empties the answer): the pipeline can be backfilled")
    if total:
        notes.append(f"total_field {total}: the window's count (lgsp reconcile checks every record is held)")
    for column in columns.values():
        if column.written:
            notes.append(column.written)
        if column.odd:
            notes.append(f"column {column.name}: {column.odd} of {column.filled} sampled values are not "
                         f"{column.type}s (a sync would quarantine them)")
        if column.declared is None and column.filled < len(records) and column.filled >= 0.99 * len(records):
            notes.append(f"column {column.name}: empty in {len(records) - column.filled} of {len(records)}: "
                         "say required: true if the source must fill it")
    if len(records) < REQUIRED_AFTER:
        notes.append(f"only {len(records)} record(s) sampled: no column but the key and cursor field is said "
                     "required (a sync quarantines a record without a required field)")
    else:
        notes.append("required: the columns filled in every sampled record; drop it from one the source may leave "
                     "empty, or a sync quarantines the records without it")
    if nested:
        notes.append(f"nested field(s) {', '.join(nested)} left out: a sync keeps them in _extras")
    notes += check_notes
    personal = [c for c in columns if PERSONAL.search(c)]
    if personal:
        notes.append(f"personal data? {', '.join(personal)}: before sharing the dataset, give each a policy "
                     "(mask, pseudonym, withhold) in catalog/sharing.yaml")
    notes.append(f"{ask.calls} call(s) to {system.name} for the probes, {pages} page(s) for the sample")
    title = name.replace("_", " ").capitalize() + f", from the {system.name} system"
    return Draft(system.name, operation, name, pipeline, title, columns, len(records), key, cursor_field,
                 checks, source, notes, personal, deleted)


def _said_paging(paginator: dict[str, Any]) -> str:
    if paginator["type"] == "single":
        return "single (the answer said nothing of other pages)"
    size = paginator.get("page_size", paginator.get("limit"))
    if paginator["type"] in ("page_number", "offset") and size != PAGE_SIZE:
        return ", ".join(f"{k}={v}" for k, v in paginator.items() if v is not None) + (
            f" (the source answers at most {size} records a page, whatever is asked)")
    return ", ".join(f"{k}={v}" for k, v in paginator.items() if v is not None)


def _sample(system: SystemSpec, source: dict[str, Any], paginator: dict[str, Any], sample: int,
            notes: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Up to `sample` records read as a sync reads them; first three small pages, which must not overlap."""
    from connectors import open_transport

    small = {**paginator, **{k: PROBE_SIZE for k in ("page_size", "limit") if k in paginator}}
    spec = SourceSpec(**{**source, "paginator": {k: v for k, v in small.items() if v is not None}})
    transport = open_transport(system, spec)
    try:
        if paginator["type"] != "single":
            seen: set[bytes] = set()
            pages = list(itertools.islice(iter_pages(system, spec, transport, None), 3))
            for page in pages:
                keys = {orjson.dumps(dict(r), default=str, option=orjson.OPT_SORT_KEYS) for r in page.records}
                if keys & seen:
                    raise DiscoverError(f"{system.name} {spec.operation}: page {page.number} repeats a record of an "
                                        f"earlier page with {_said_paging(paginator)}: the paging is not what it seems")
                seen |= keys
            notes.append(f"paging checked: {len(pages)} page(s) of {PROBE_SIZE}, no record repeated")
        full = SourceSpec(**{**source, "paginator": {**source["paginator"], **{
            k: min(int(v), sample) for k, v in source["paginator"].items() if k in ("page_size", "limit")}}})
        records: list[dict[str, Any]] = []
        count = read_pages(system, full, transport, None, sample, records)
        return records[:sample], count
    finally:
        transport.close()


def read_pages(system: SystemSpec, source: SourceSpec, transport: Any, since: datetime | None, sample: int,
               records: list[dict[str, Any]]) -> int:
    """Pages read as a sync reads them (`iter_pages`), their records added to `records` until it holds `sample`
    (what was read stays there if a page fails); how many pages were read."""
    pages = 0
    for page in iter_pages(system, source, transport, since):
        records += [dict(r) for r in page.records]
        pages += 1
        if len(records) >= sample:
            break
    return pages


def write_draft(draft: Draft, directory: Path) -> list[Path]:
    """Append the draft's blocks to the catalog files in `directory` (datasets, pipelines, and sharing when drafted),
    after checking the whole catalog loads with them."""
    import tempfile

    from catalog import load_catalog

    catalog = load_catalog(directory)
    taken = [f"{kind} {name}" for kind, name, names in (("dataset", draft.dataset, catalog.datasets),
                                                          ("pipeline", draft.pipeline, catalog.pipelines),
                                                          ("shared dataset", draft.dataset if draft.share else "",
                                                           catalog.sharing))
             if name in names]
    if taken:
        raise DiscoverError(f"the catalog already has {' and '.join(taken)}: "
                            "name the draft's with --dataset/--pipeline")
    with tempfile.TemporaryDirectory() as scratch:
        for path in directory.glob("*.yaml"):
            (Path(scratch) / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
        for name, text in draft.yaml_blocks().items():
            with (Path(scratch) / name).open("a", encoding="utf-8") as handle:
                handle.write("\n" + text)
        load_catalog(Path(scratch))  # a CatalogError names the file and the field
    written = []
    for name, text in draft.yaml_blocks().items():
        with (directory / name).open("a", encoding="utf-8") as handle:
            handle.write("\n" + text)
        written.append(directory / name)
    return written


# --- does a pipeline's system still answer as the catalog says? ----------------------------------------------------


@dataclass
class Finding:
    """One difference between what a pipeline's system answers and what the catalog declares."""

    severity: str  # "error": the next sync fails or quarantines what it should not; "warning": look at it;
    # "info": what the sync will do with these records (a rule quarantining some, within the dataset's limit)
    subject: str  # a column, a parameter, a rule
    said: str

    def as_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "subject": self.subject, "said": self.said}


@dataclass
class Comparison:
    """`compare`'s answer: the pipeline, how many records were read and what differs."""

    pipeline: str
    system: str
    sampled: int
    findings: list[Finding]

    @property
    def holds(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "system": self.system, "sampled": self.sampled, "holds": self.holds,
                "findings": [f.as_dict() for f in self.findings]}


def compare(catalog: Catalog, pipeline_name: str, sample: int = 1000, since: datetime | None = None) -> Comparison:
    """Read up to `sample` records as the pipeline's sync reads them (from `since`) and compare them with the
    catalog: columns missing, new or of another type, the key, the cursor and until parameters, the row rules
    and the dataset's quarantine limit. No row is landed."""
    from connectors import open_transport

    pipeline = catalog.pipelines.get(pipeline_name)
    if pipeline is None:
        raise DiscoverError(f"no pipeline {pipeline_name!r} in catalog/pipelines.yaml "
                            f"(known: {', '.join(sorted(catalog.pipelines))})")
    system, source = catalog.systems[pipeline.source.system], pipeline.source
    dataset = catalog.datasets[pipeline.dataset]
    findings: list[Finding] = []
    transport = open_transport(system, source)
    records: list[dict[str, Any]] = []
    try:
        read_pages(system, source, transport, since, sample, records)
    except (ConnectorError, RuntimeError) as exc:
        findings.append(Finding("error", source.operation, f"reading the pages as a sync does failed: {exc}"))
    finally:
        transport.close()
    records = records[:sample]
    if records:
        findings += _column_findings(records, dataset)
    elif not findings:
        findings.append(Finding("warning", source.records_field, f"no records at '{source.records_field}'"
                                + (f" since {since.isoformat()}" if since else "") + ": nothing to compare"))
    if system.protocol in ("rest", "soap") and records:
        findings += _parameter_findings(system, source)
    return Comparison(pipeline_name, system.name, len(records), findings)


def _declared(spec: ColumnSpec) -> str:
    return f"{spec.type}s" + (f" written {spec.format}" if spec.format else "")


def _column_findings(records: list[dict[str, Any]], dataset: DatasetSpec) -> list[Finding]:
    from quality.checks import run_row_checks
    from schemas.arrow import coerce

    findings: list[Finding] = []
    n = len(records)
    seen, nested = guess_columns(records)
    for name, spec in dataset.columns.items():
        guess = seen.get(name)
        needed = spec.required or name in dataset.key
        if guess is None and name not in nested:
            findings.append(Finding("error" if needed else "warning", name,
                                    f"declared{' required' if needed else ''} but in none of the {n} records: "
                                    + ("a sync fails (required field missing); the source renamed or dropped it?"
                                       if needed else "still sent?")))
        elif guess is not None and needed and guess.filled < n:
            findings.append(Finding("warning", name, f"required but empty in {n - guess.filled} of {n} records: "
                                                     "a sync quarantines them"))
        if guess is not None and spec.type == "timestamp" and spec.timezone is None and guess.timezone:
            findings.append(Finding("warning", name, "times written without a zone are read as UTC: if they are the "
                                                     f"system's local time, say `timezone: {LOCAL_ZONE}`"))
    for name in [*seen, *nested]:
        if name not in dataset.columns:
            kind = "nested" if name in nested else seen[name].kind()
            findings.append(Finding("warning", name, f"sent ({kind}) but not declared: a sync keeps it in _extras; "
                                                     "declare it, then `lgsp warehouse migrate`"))
    absent = {name for name, spec in dataset.columns.items() if spec.required and name not in seen}
    if absent:  # said above; the other columns are still compared (coerce refuses a batch without them)
        dataset = dataset.model_copy(update={"columns": {
            name: spec.model_copy(update={"required": False}) if name in absent else spec
            for name, spec in dataset.columns.items()}})
    typed = coerce(records, dataset)
    wrong = Counter(reason.split(":", 1)[0] for reason in typed.type_errors.values())
    for name, count in wrong.items():
        filled = seen[name].filled if name in seen else n
        severe = count > (1 - HOLDS) * filled
        findings.append(Finding("error" if severe else "warning", name,
                                f"{count} of {filled} values are not {_declared(dataset.columns[name])} (the source "
                                f"sends {seen[name].kind('s') if name in seen else '?'}): a sync quarantines them"))
    keys = [tuple(_hashable(r.get(k)) for k in dataset.key) for r in records]
    if len(set(keys)) < n and dataset.write_mode != "append":
        findings.append(Finding("warning", ",".join(dataset.key), f"{n - len(set(keys))} of {n} records repeat a "
                                                                  "key: the source's key is another?"))
    checked = run_row_checks(typed.frame, dataset, typed.type_errors)
    by_rule = Counter(r.rule for r in checked.rejections)
    for rule, count in by_rule.most_common():
        if rule != "type" and not rule.startswith("not_null:"):  # both said above, column by column
            findings.append(Finding("info", rule, f"rejects {count} of {n} records (quarantined)"))
    rate, limit = len(checked.rejections) / n, dataset.expectations.max_quarantine_rate
    if rate > limit:
        findings.append(Finding("error", "max_quarantine_rate", f"{rate:.1%} of the records would be quarantined, "
                                f"above the dataset's {limit:.1%}: the sync's batch fails its expectations"))
    return findings


def _parameter_findings(system: SystemSpec, source: SourceSpec) -> list[Finding]:
    """The cursor must still empty the answer from a far-future value, the until from a far-past one."""
    findings: list[Finding] = []
    ask = Asker(system, source.operation, source.method, source.params)
    try:
        for param, when, what in ((source.cursor_param, FUTURE, "every incremental sync re-reads everything"),
                                  (source.until_param, PAST, "a backfill pulls more than its window")):
            if not param:
                continue
            answer = ask.call({param: format_cursor(when, source.cursor_format, source.cursor_timezone)})
            got = _records(answer, source.records_field)
            if got is None:
                findings.append(Finding("error", param, f"refused ({'far-future' if when is FUTURE else 'far-past'} "
                                                        "value): the source no longer takes it"))
            elif got:
                findings.append(Finding("warning", param, f"a {'far-future' if when is FUTURE else 'far-past'} value "
                                                          f"still answers {len(got)} record(s): {what}"))
        if source.total_field:
            answer = ask.call({})
            if answer is not None and not isinstance(dig(answer, source.total_field), int):
                findings.append(Finding("warning", source.total_field, "the answer has no count there: "
                                                                       "`lgsp reconcile` cannot count the source"))
    finally:
        ask.close()
    return findings
