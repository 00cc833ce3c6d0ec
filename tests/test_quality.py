"""Row rules (vectorised) and the Great Expectations suite generated from the definitions."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog import load_catalog
from quality import QualityError, run_row_checks, suite_definition, validate_dataset
from quality.reference import CCCD_PROVINCE_CODES, commune_codes, province_communes
from quality.rules import RULES
from schemas import coerce, coerce_arrow, json_schema
from schemas.arrow import is_nfc

ROOT = Path(__file__).resolve().parents[1]

PROVINCES = sorted(CCCD_PROVINCE_CODES)


def _cccd_ok(personal_id: str, sex: str, born: date) -> bool:
    frame = pd.DataFrame({"personal_id": [personal_id], "sex": [sex], "birth_date": [pd.Timestamp(born)]},
                         dtype="object").astype({"personal_id": "string", "sex": "string"})
    frame["birth_date"] = pd.to_datetime(frame["birth_date"])
    return bool(RULES["cccd"].check(frame, column="personal_id", sex="sex", birth_date="birth_date").iloc[0])


def _make_cccd(province: str, sex: str, born: date, serial: int) -> str:
    digit4 = (born.year // 100 - 19) * 2 + (sex == "female")
    return f"{province}{digit4}{born.year % 100:02d}{serial:06d}"


births = st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PROVINCES), st.sampled_from(["male", "female"]), births, st.integers(0, 999_999))
def test_cccd_valid_forms_pass(province: str, sex: str, born: date, serial: int) -> None:
    assert _cccd_ok(_make_cccd(province, sex, born, serial), sex, born)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PROVINCES), st.sampled_from(["male", "female"]), births, st.integers(0, 999_999),
       st.sampled_from(["short", "long", "letter", "province", "sex", "century", "year"]))
def test_cccd_invalid_forms_fail(province: str, sex: str, born: date, serial: int, defect: str) -> None:
    good = _make_cccd(province, sex, born, serial)
    other_sex = "female" if sex == "male" else "male"
    bad_year = born.replace(year=born.year + 1 if born.year % 100 != 99 else born.year - 1, day=1)
    cases = {
        "short": (good[:-1], sex, born),
        "long": (good + "0", sex, born),
        "letter": (good[:5] + "X" + good[6:], sex, born),
        "province": ("000" + good[3:], sex, born),
        "sex": (good, other_sex, born),
        "century": (good, sex, born.replace(year=born.year + 100 if born.year < 2000 else born.year - 100, day=1)),
        "year": (good, sex, bad_year),
    }
    personal_id, claimed_sex, claimed_birth = cases[defect]
    assert not _cccd_ok(personal_id, claimed_sex, claimed_birth)


def test_reference_data_is_the_2025_official_list() -> None:
    assert len(commune_codes()) == 3321
    ninh_binh = province_communes(37)
    assert len(ninh_binh) == 129
    assert len(CCCD_PROVINCE_CODES) == 63


def test_a_new_home_reads_the_commune_codes_from_the_package_data_without_importing_it(tmp_path: Any) -> None:
    """The first run of an installation (no cache yet) reads the package's data file (~7 ms), not its
    enums (~0.3 s), and gets exactly the codes its API lists."""
    script = ("import sys; from quality.reference import commune_codes; codes = commune_codes(); "
              "print(len(codes), 'vietnam_provinces.codes' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "LGSP_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)})
    assert done.stdout.split() == ["3321", "False"], done.stderr[-2000:]
    from vietnam_provinces import Ward

    assert commune_codes() == frozenset(f"{int(w.code):05d}" for w in Ward.iter_all())


def test_rules_split_a_batch_with_reasons() -> None:
    dataset = load_catalog().datasets["dossier"]
    base = {"dossier_id": "H37.01-250801-0001", "procedure_code": "1.000001", "commune_code": "14464",
            "received_at": "2025-08-01T08:00:00+07:00", "due_at": "2025-08-05T17:00:00+07:00",
            "finished_at": None, "returned_at": None, "status": "received", "channel": "online",
            "paid_online": False, "digitised": True, "updated_at": "2025-08-01T08:00:00+07:00"}
    rows = [
        base,
        {**base, "dossier_id": "b1", "due_at": "2025-07-01T08:00:00+07:00"},
        {**base, "dossier_id": "b2", "channel": "fax"},
        {**base, "dossier_id": "b3", "commune_code": "99999"},
        {**base, "dossier_id": "b4", "received_at": "not a date"},
        {**base, "dossier_id": None},
        {**base, "dossier_id": "b6", "finished_at": "2025-08-03T08:00:00+07:00",
         "returned_at": "2025-08-02T08:00:00+07:00", "status": "returned"},
        {**base, "dossier_id": "b7", "paid_online": "yes"},
    ]
    typed = coerce(rows, dataset)
    result = run_row_checks(typed.frame, dataset, typed.type_errors)
    assert list(result.passed) == [True] + [False] * 7
    by_position = {r.position: r for r in result.rejections}
    assert by_position[1].rule == "ordered:received_at,due_at" and "is after" in by_position[1].reason
    assert by_position[2].rule == "enum:channel" and "'fax'" in by_position[2].reason
    assert by_position[3].rule == "commune_code:commune_code"
    assert by_position[4].rule == "type" and "received_at" in by_position[4].reason
    assert by_position[5].rule == "not_null:dossier_id"
    assert by_position[6].rule == "ordered:received_at,finished_at,returned_at"
    assert by_position[7].rule == "type" and "paid_online" in by_position[7].reason


def test_text_is_normalised_to_nfc() -> None:
    dataset = load_catalog().datasets["citizen"]
    decomposed = "Nguye\u0302\u0303n"  # e + combining circumflex + combining tilde
    typed = coerce([{"personal_id": "037090001234", "full_name": decomposed, "birth_date": "1990-01-01",
                     "sex": "male", "commune_code": "14464", "updated_at": "2025-08-01T00:00:00Z"}], dataset)
    assert typed.frame.loc[0, "full_name"] == "Nguyễn"


TEXTS = ["Nguyễn Văn Ấn", "Nguye\u0302\u0303n", "e", "\u0301", "Hà Nội", "plain ascii", "", None]
DATES = ["1987-03-30", "1987-3-30", "19870330", "1987-03-30T00:00:00", "1987-02-30", None]
STAMPS = ["2025-08-01T00:00:33Z", "2025-08-01T07:00:33+07:00", "2025-08-01 00:00:33.5Z", "2025-08-01T00:00:33",
          "2025-08-01", "2025-02-30T00:00:00Z", "yesterday", None]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TEXTS), st.sampled_from(TEXTS), st.sampled_from(DATES),
                          st.sampled_from(STAMPS)), min_size=1, max_size=12))
def test_the_arrow_fast_path_types_exactly_as_coerce_does(rows: list[tuple[Any, ...]]) -> None:
    """NFC is checked, not assumed, and only strict ISO dates skip pandas' parser: same frame, same errors."""
    import pyarrow as pa

    dataset = load_catalog().datasets["citizen"]
    records = [{"personal_id": f"0370900{n:05d}", "full_name": name, "address": address, "birth_date": born,
                "sex": "male", "commune_code": "14464", "phone": None, "updated_at": stamp}
               for n, (name, address, born, stamp) in enumerate(rows)]
    table = pa.Table.from_pylist(records, schema=json_schema(dataset))
    fast, slow = coerce_arrow(table, dataset), coerce(records, dataset)
    if fast is None:  # a required column with no value anywhere: coerce's business
        assert any(all(r[name] is None for r in records) for name in ("full_name", "birth_date", "updated_at"))
        return
    pd.testing.assert_frame_equal(fast.frame, slow.frame, check_dtype=False)
    assert fast.frame["birth_date"].dtype == slow.frame["birth_date"].dtype
    assert fast.frame["updated_at"].dtype == slow.frame["updated_at"].dtype
    assert fast.type_errors == slow.type_errors


def test_nfc_check_is_exact_and_sees_every_chunk() -> None:
    import pyarrow as pa

    composed = pa.array(["Nguyễn Văn Ấn", None, "Hồ Chí Minh"])
    decomposed = pa.array(["ok", "Nguye\u0302\u0303n"])
    assert is_nfc(pa.chunked_array([composed])) and is_nfc(pa.chunked_array([decomposed.slice(0, 1)]))
    assert not is_nfc(pa.chunked_array([composed, decomposed]))
    assert not is_nfc(decomposed.slice(1)) and not is_nfc(pa.array(["x", "Nguye\u0302\u0303n"], pa.large_string()))
    assert is_nfc(pa.array(["e", "\u0301"]).slice(1))  # a lone combining mark is NFC; after an "e" it is not
    assert not is_nfc(pa.array(["e", "\u0301"]))  # (a boundary can make it look unnormalised: never the reverse)


def test_suite_is_generated_from_the_definition() -> None:
    dataset = load_catalog().datasets["citizen"]
    kinds = {kind: kwargs for kind, kwargs in suite_definition(dataset)}
    assert kinds["ExpectColumnValuesToBeUnique"]["column"] == "personal_id"
    assert kinds["ExpectColumnValuesToBeInSet"]["mostly"] == pytest.approx(0.8)
    assert set(kinds["ExpectTableColumnsToMatchSet"]["column_set"]) == {*dataset.columns, "_row_ok"}


def test_duplicate_keys_fail_the_gx_suite() -> None:
    dataset = load_catalog().datasets["citizen"]
    row: dict[str, Any] = {"personal_id": "037090001234", "full_name": "A", "birth_date": "1990-01-01",
                           "sex": "male", "commune_code": "14464", "updated_at": "2025-08-01T00:00:00Z"}
    typed = coerce([row, dict(row)], dataset)
    with pytest.raises(QualityError, match="expect_column_values_to_be_unique"):
        validate_dataset(typed.frame, [True, True], dataset, "b-dup")
    outcomes = validate_dataset(typed.frame.iloc[:1], [True], dataset, "b-ok")
    assert all(o.success for o in outcomes)


def test_a_key_is_unique_among_the_rows_that_passed_the_row_rules() -> None:
    """A quarantined row sharing a good row's key does not fail the suite's uniqueness (it is not loaded);
    two good rows with one key do, and the counts are those of the good rows."""
    dataset = load_catalog().datasets["citizen"]
    row: dict[str, Any] = {"personal_id": "037090001234", "full_name": "A", "birth_date": "1990-01-01",
                           "sex": "male", "commune_code": "14464", "updated_at": "2025-08-01T00:00:00Z"}
    rows = [row, dict(row), {**row, "personal_id": "037090001235"}, dict(row)]
    frame = coerce(rows, dataset).frame
    outcomes = {o.expectation: o for o in validate_dataset(frame, [True, False, True, False], dataset, "b-q",
                                                           raise_on_failure=False)}
    unique = outcomes["expect_column_values_to_be_unique"]
    assert unique.success and unique.unexpected_count == 0
    assert list(frame["personal_id"]) == [r["personal_id"] for r in rows]  # the caller's frame is left as it was
    outcomes = {o.expectation: o for o in validate_dataset(frame, [True, True, True, False], dataset, "b-q2",
                                                           raise_on_failure=False)}
    unique = outcomes["expect_column_values_to_be_unique"]
    assert not unique.success and unique.unexpected_count == 2 and unique.observed == pytest.approx(2 / 3)


def _tax_ok(value: str) -> bool:
    frame = pd.DataFrame({"tax_code": pd.Series([value], dtype="string")})
    return bool(RULES["tax_code"].check(frame, column="tax_code").iloc[0])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 9_999_999_999), st.one_of(st.none(), st.integers(1, 999)))
def test_tax_code_valid_forms_pass(number: int, branch: int | None) -> None:
    value = f"{number:010d}" + (f"-{branch:03d}" if branch is not None else "")
    assert _tax_ok(value)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 9_999_999_999), st.integers(1, 999),
       st.sampled_from(["short", "long", "letter", "no_dash", "branch_zero", "branch_short", "space"]))
def test_tax_code_invalid_forms_fail(number: int, branch: int, defect: str) -> None:
    base = f"{number:010d}"
    value = {"short": base[:-1], "long": base + "1", "letter": "A" + base[1:],
             "no_dash": f"{base}{branch:03d}", "branch_zero": f"{base}-000",
             "branch_short": f"{base}-{branch:03d}"[:-1], "space": f" {base}"}[defect]
    assert not _tax_ok(value)
