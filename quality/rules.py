"""Row rules, vectorised over a pandas batch and registered by name.

A rule returns a boolean Series: True where the row passes. Nulls pass every
rule except `not_null` (absence is the `not_null` rule's business). `explain`
gives the reason for one failing row; it runs only on failing rows.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from quality.reference import CCCD_PROVINCE_CODES, commune_codes

Mask = pd.Series


@dataclass(frozen=True)
class Rule:
    """A named row rule: a vectorised predicate and a per-row explanation."""

    name: str
    check: Callable[..., Mask]
    explain: Callable[..., str]


RULES: dict[str, Rule] = {}


LOCAL_TZ = "Asia/Ho_Chi_Minh"


def rule(name: str, explain: Callable[..., str]) -> Callable[[Callable[..., Mask]], Callable[..., Mask]]:
    def _register(check: Callable[..., Mask]) -> Callable[..., Mask]:
        RULES[name] = Rule(name, check, explain)
        return check
    return _register


def _col(df: pd.DataFrame, column: str) -> pd.Series:
    return df[column]


def _found_in(col: pd.Series, values: pa.Array) -> Mask:
    """Where `col`'s value is one of `values` (nulls: False).

    Arrow's hash lookup: pandas' `isin` spent ~11 ms a call whatever the column's length
    (against 3,321 commune codes), Arrow 0.2 ms for 10,000 values.
    """
    try:
        found = pc.is_in(pa.array(col.array, from_pandas=True), value_set=values)
    except pa.ArrowException:  # values of another type than the set's: pandas compares them one by one
        return col.isin(values.to_pylist()).fillna(False).astype(bool)
    return pd.Series(found.fill_null(False).to_numpy(zero_copy_only=False), index=col.index)


@cache
def commune_value_set() -> pa.Array:
    return pa.array(sorted(commune_codes()), pa.string())


@rule("not_null", lambda row, column: f"{column} is required but missing")
def not_null(df: pd.DataFrame, column: str) -> Mask:
    return _col(df, column).notna()


@rule("enum", lambda row, column, values: f"{column} {row[column]!r} is not one of {values}")
def enum(df: pd.DataFrame, column: str, values: list[Any]) -> Mask:
    col = _col(df, column)
    return col.isna() | col.isin(values)


@rule("pattern", lambda row, column, pattern: f"{column} {row[column]!r} does not match {pattern}")
def pattern(df: pd.DataFrame, column: str, pattern: str) -> Mask:
    col = _col(df, column)
    return (col.isna() | col.str.fullmatch(pattern)).fillna(False).astype(bool)


PHONE_VN = r"0[35789][0-9]{8}"


@rule("phone_vn", lambda row, column: f"{column} {row[column]!r} is not a Vietnamese mobile number (0 + 9 digits)")
def phone_vn(df: pd.DataFrame, column: str) -> Mask:
    return pattern(df, column, PHONE_VN)


@rule("commune_code", lambda row, column: f"{column} {row[column]!r} is not an official commune code (2025)")
def commune_code(df: pd.DataFrame, column: str) -> Mask:
    col = _col(df, column)
    return col.isna() | _found_in(col, commune_value_set())


def _digits(col: pd.Series, start: int, stop: int) -> pd.Series:
    """The number in characters [start, stop) of each value (<NA> where they are not all digits)."""
    storage = getattr(col.dtype, "storage", None)
    if storage != "pyarrow":
        return pd.to_numeric(col.str.slice(start, stop), errors="coerce").astype("Int64")
    import pyarrow as pa
    import pyarrow.compute as pc

    part = pc.utf8_slice_codeunits(pa.array(col.array), start, stop)
    number = pc.cast(pc.if_else(pc.match_substring_regex(part, f"^[0-9]{{{stop - start}}}$"), part, None), pa.int64())
    return pd.Series(number.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get), index=col.index)


def _cccd_expected_digit4(sex: pd.Series, birth: pd.Series) -> pd.Series:
    """0/1 male/female born 1900-1999, 2/3 born 2000-2099, 4/5 2100-2199 ..."""
    century = (birth.dt.year // 100 - 19) * 2
    return (century + (sex == "female").astype("Int64")).astype("Int64")


def _explain_cccd(row: pd.Series, column: str, sex: str, birth_date: str) -> str:
    value = row[column]
    if not isinstance(value, str) or len(value) != 12 or not value.isdigit():
        return f"{column} {value!r} is not 12 digits"
    if value[:3] not in CCCD_PROVINCE_CODES:
        return f"{column} {value!r}: {value[:3]} is not a province code"
    born = row[birth_date]
    if pd.notna(born) and value[4:6] != f"{born.year % 100:02d}":
        return f"{column} {value!r}: digits 5-6 ({value[4:6]}) do not match birth year {born.year}"
    return (f"{column} {value!r}: 4th digit {value[3]} does not match sex {row[sex]!r} "
            f"born {getattr(born, 'year', '?')}")


@rule("cccd", _explain_cccd)
def cccd(df: pd.DataFrame, column: str, sex: str, birth_date: str) -> Mask:
    """12 digits; province code; 4th digit = sex/century; 5-6 = birth year."""
    col = _col(df, column)
    shape = col.str.fullmatch(r"[0-9]{12}").fillna(False).astype(bool)
    province = col.str.slice(0, 3).isin(CCCD_PROVINCE_CODES)
    born = pd.to_datetime(df[birth_date])
    digit4, year2 = _digits(col, 3, 4), _digits(col, 4, 6)
    consistent = (digit4 == _cccd_expected_digit4(df[sex], born)) & (year2 == born.dt.year % 100)
    consistent = consistent.fillna(True).astype(bool)  # unknown sex/birth: the other rules decide
    return col.isna() | (shape & province & consistent)


def _instant(value: Any) -> Any:
    """A local day (naive) or an instant (aware) as an aware instant, so the two compare."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize(LOCAL_TZ) if stamp.tzinfo is None else stamp


def _explain_ordered(row: pd.Series, columns: list[str]) -> str:
    present = [(c, _instant(row[c])) for c in columns if pd.notna(row[c])]
    for (a, va), (b, vb) in zip(present, present[1:]):
        if va > vb:
            return f"{a} ({va}) is after {b} ({vb})"
    return f"{' <= '.join(columns)} does not hold"


def _comparable(a: pd.Series, b: pd.Series) -> tuple[pd.Series, pd.Series]:
    """A date column (naive, a local day) and a timestamp column (UTC) compared as instants in Vietnam."""
    a_tz, b_tz = getattr(a.dt, "tz", None), getattr(b.dt, "tz", None)
    if (a_tz is None) != (b_tz is None):
        a = a.dt.tz_localize(LOCAL_TZ) if a_tz is None else a
        b = b.dt.tz_localize(LOCAL_TZ) if b_tz is None else b
    return a, b


@rule("ordered", _explain_ordered)
def ordered(df: pd.DataFrame, columns: list[str]) -> Mask:
    """Each present value <= the next present one (nulls are skipped); dates are local days in Vietnam."""
    ok = pd.Series(True, index=df.index)
    for i, earlier in enumerate(columns):
        for later in columns[i + 1:]:
            a, b = _comparable(df[earlier], df[later])
            ok &= (a.isna() | b.isna() | (a <= b)).fillna(True).astype(bool)
    return ok


EMAIL = r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}"


@rule("email", lambda row, column: f"{column} {row[column]!r} is not an e-mail address")
def email(df: pd.DataFrame, column: str) -> Mask:
    col = _col(df, column)
    return col.isna() | col.str.fullmatch(EMAIL).fillna(False).astype(bool)


def _explain_range(row: pd.Series, column: str, min: float | None = None, max: float | None = None,  # noqa: A002
                   min_exclusive: bool = False) -> str:
    low = "" if min is None else f"{'>' if min_exclusive else '>='} {min}"
    high = "" if max is None else f"<= {max}"
    return f"{column} {row[column]!r} is not {' and '.join(x for x in (low, high) if x)}"


@rule("range", _explain_range)
def value_range(df: pd.DataFrame, column: str, min: float | None = None, max: float | None = None,  # noqa: A002
                min_exclusive: bool = False) -> Mask:
    """A number within [min, max] (`min_exclusive: true` for > min), e.g. a rate in 0..1, an area > 0."""
    col = pd.to_numeric(df[column], errors="coerce")
    ok = pd.Series(True, index=df.index)
    if min is not None:
        ok &= (col > min) if min_exclusive else (col >= min)
    if max is not None:
        ok &= col <= max
    return (col.isna() | ok.fillna(False)).astype(bool)


TAX_CODE = r"[0-9]{10}(-[0-9]{3})?"


@rule("tax_code", lambda row, column: f"{column} {row[column]!r} is not a tax code "
                                      "(10 digits, or the branch form 0123456789-001)")
def tax_code(df: pd.DataFrame, column: str) -> Mask:
    """Enterprise tax code (MST): 10 digits; a branch adds -NNN (13 digits), branch 000 is not valid."""
    col = _col(df, column)
    shaped = col.str.fullmatch(TAX_CODE).fillna(False).astype(bool)
    branch_zero = col.str.endswith("-000").fillna(False).astype(bool)
    return col.isna() | (shaped & ~branch_zero)
