"""The old-to-new commune mapping from the real package data, remapping, normal forms, conflict rules."""
from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from vietnam_address_converter.data import DEFAULT_DATA
from vietnam_provinces import ProvinceCode, Ward

from consolidation.mapping import OLD_PROVINCES, commune_table
from consolidation.matching import Cluster, match_citizens, match_enterprises
from consolidation.normalise import cccd_agrees, fold_name, personal_id_key, tax_code_key
from consolidation.records import SourceRecord, remap
from consolidation.rules import resolve_field


def test_new_communes_are_exactly_the_official_ones_of_province_37() -> None:
    table = commune_table()
    official = {f"{int(w.code):05d}" for w in Ward.iter_by_province(ProvinceCode(37))}
    assert len(official) == 129  # the article's figure, read from vietnam-provinces
    assert set(table.new_communes) == official
    reached = {m.new_code for m in table.mappings.values() if m.status == "mapped"}
    assert reached == official, "every new commune receives at least one old commune by code"


def test_every_old_commune_of_the_three_provinces_maps_or_says_why() -> None:
    table = commune_table()
    converter_codes = {conv for _, conv in OLD_PROVINCES.values()}
    in_mapping = {r["old"]["ward_code"] for r in DEFAULT_DATA["mapping"]["rows"]
                  if r["old"]["province_code"] in converter_codes}
    in_units = {w["code"] for w in DEFAULT_DATA["oldWards"].values()
                if DEFAULT_DATA["oldDistricts"].get(w["parent_code"], {}).get("parent_code") in converter_codes}
    assert {m.old.commune_code for m in table.mappings.values()} == in_mapping | in_units
    for m in table.mappings.values():
        assert (m.status == "mapped") == (m.new_code is not None)
        assert m.reason, m.old
        if m.status == "split":
            assert len(m.candidates) >= 2 and set(m.candidates) <= set(table.new_communes)
    statuses = {m.status for m in table.mappings.values()}
    assert statuses <= {"mapped", "split", "dissolved"}, "a package update broke the join by names"


def test_old_province_codes_are_the_gso_ones() -> None:
    table = commune_table()
    counts = {p: len(table.old_communes(p)) for p in OLD_PROVINCES}
    assert set(counts) == {"37", "36", "35"} and all(n > 90 for n in counts.values())


def _record(kind: str = "citizen", priority: int = 0, **fields: object) -> SourceRecord:
    base = {"citizen_id": f"K{priority}-{len(fields)}", "enterprise_id": f"E{priority}",
            "updated_at": "2024-01-01T00:00:00+07:00"}
    return SourceRecord.from_json(["legacy_ninh_binh", "legacy_nam_dinh", "legacy_ha_nam"][priority], kind, priority,
                                  {**base, **fields})


def test_remap_by_code_by_names_and_refusals() -> None:
    table = commune_table()
    by_code = _record(province_code="35", district_code="292", commune_code="327972")
    assert remap(by_code, table).new_code == "13318" and remap(by_code, table).how == "code"
    by_names = _record(province_code="35", district_code="292", commune_code="0",
                       district_name="Thành phố  Phủ Lý", commune_name="Xa Phu Van")
    assert (remap(by_names, table).new_code, remap(by_names, table).how) == ("13318", "names")
    split = next(m for m in table.mappings.values() if m.status == "split").old
    problem = remap(_record(province_code=split.province_code, district_code=split.district_code,
                            commune_code=split.commune_code), table).problem
    assert problem and "split between" in problem
    unknown = remap(_record(province_code="35", district_code="1", commune_code="2", commune_name="Xã Không Rõ"), table)
    assert unknown.new_code is None and "neither" in (unknown.problem or "")


def test_bad_date_names_the_field() -> None:
    with pytest.raises(ValueError, match="birth_date"):
        _record(birth_date="02/04/1990")


def test_normal_forms() -> None:
    assert fold_name("  NGUYỄN  Thị   Lan ") == fold_name("Nguyen Thi Lan") == "nguyen thi lan"
    assert fold_name("\u0110\u1eb7ng") == "dang"
    assert tax_code_key("0101 234.567") == "0101234567" and tax_code_key("12345") is None
    assert personal_id_key("123456789") is None and personal_id_key("037190012345") == "037190012345"
    assert cccd_agrees("037190012345", date(1990, 4, 2), "female")
    assert not cccd_agrees("037190012345", date(1980, 4, 2))
    assert not cccd_agrees("037290012345", date(1990, 4, 2))


def _citizen(priority: int, key: str, updated: str, **fields: object) -> SourceRecord:
    record = _record("citizen", priority, citizen_id=key, updated_at=updated, **fields)
    record.new_commune = fields.get("commune", "13318")  # type: ignore[assignment]
    return record


def test_cccd_beats_names_and_rules_settle_conflicts() -> None:
    first = _citizen(0, "NB-1", "2024-01-01T00:00:00+07:00", personal_id="037190012345", full_name="Nguyễn Thị Lan",
                     birth_date="1990-04-02", sex="female", address="1 Phố A")
    second = _citizen(1, "ND-1", "2024-06-01T00:00:00+07:00", personal_id="037190012345", full_name="NGUYEN THI LAN",
                      birth_date="1980-04-02", sex="female", address="9 Phố B", commune="13291")
    no_id = _citizen(2, "HN-1", "2023-01-01T00:00:00+07:00", personal_id=None, full_name="Nguyễn  Thị Lan",
                     birth_date="1990-04-02", sex="female")
    clusters, reviews = match_citizens([first, second, no_id])
    assert not reviews and len(clusters) == 1 and clusters[0].rule == "personal_id+name_birth"
    cluster = clusters[0]
    assert resolve_field(cluster, "full_name")[0] == "Nguyễn Thị Lan"
    birth, decision = resolve_field(cluster, "birth_date")
    assert birth == date(1990, 4, 2) and decision and decision.rule == "cccd_consistent"
    address, decision = resolve_field(cluster, "address")
    assert address == "9 Phố B" and decision and decision.winner == "legacy_nam_dinh:ND-1"
    assert resolve_field(cluster, "commune_code")[1].winner == "legacy_nam_dinh:ND-1"  # type: ignore[union-attr]


def test_ambiguous_name_birth_goes_to_review() -> None:
    a = _citizen(0, "NB-1", "2024-01-01T00:00:00+07:00", personal_id="037190012345", full_name="Lê Văn Nam",
                 birth_date="1990-04-02", sex="male")
    b = _citizen(1, "ND-1", "2024-01-01T00:00:00+07:00", personal_id="036190054321", full_name="Lê Văn Nam",
                 birth_date="1990-04-02", sex="male")
    c = _citizen(2, "HN-1", "2024-01-01T00:00:00+07:00", personal_id=None, full_name="Le Van Nam",
                 birth_date="1990-04-02", sex="male")
    clusters, reviews = match_citizens([a, b, c])
    assert len(clusters) == 2 and [r.reason_code for r in reviews] == ["ambiguous_name_birth"]
    assert set(reviews[0].candidates) == {a.ref, b.ref}


def test_latest_update_tie_goes_to_the_first_source() -> None:
    one = _record("enterprise", 0, tax_code="2700000001", status="active")
    two = _record("enterprise", 2, tax_code="2700000001", status="dissolved")
    for r in (one, two):
        r.new_commune = "13318"
    (cluster,), _ = match_enterprises([one, two])
    status, decision = resolve_field(cluster, "status")
    assert status == "active" and decision and decision.losers == (("legacy_ha_nam:E2", "dissolved"),)
    assert isinstance(cluster, Cluster) and cluster.rule == "tax_code"
    assert one.updated_at == datetime(2023, 12, 31, 17, tzinfo=UTC)
