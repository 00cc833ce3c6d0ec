"""Great Expectations Data Docs: one checkpoint per batch, a site on disk that accumulates every run."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from catalog import load_catalog
from catalog.models import DatasetSpec
from quality import QualityError, run_row_checks, validate_dataset
from quality.reference import province_communes
from schemas import coerce

COMMUNES = sorted(province_communes(37))
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated LGSP_HOME with the default docs folder."""
    monkeypatch.setenv("LGSP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LGSP_DATA_DOCS_DIR", raising=False)
    return tmp_path / "home"


def _dossiers(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"dossier_id": f"H37.{i:06d}", "procedure_code": "1.000046", "commune_code": COMMUNES[i % len(COMMUNES)],
             "received_at": "2025-08-01T08:00:00Z", "due_at": "2025-08-11T08:00:00Z", "status": "received",
             "channel": "online" if i % 3 else "paper", "updated_at": "2025-08-02T09:30:00Z"}
            for i in range(start, start + n)]


def _citizens(n: int, start: int = 0) -> list[dict[str, Any]]:
    # CCCD: province 037, century/sex digit 0 (male, 1900s), birth year 90, serial
    return [{"personal_id": f"037090{i:06d}", "full_name": "Nguyễn Văn An", "birth_date": "1990-05-17",
             "sex": "male", "commune_code": COMMUNES[i % len(COMMUNES)], "updated_at": "2025-08-01T00:00:00Z"}
            for i in range(start, start + n)]


def _checked(dataset: DatasetSpec, records: list[dict[str, Any]]) -> tuple[pd.DataFrame, np.ndarray]:
    """Typed frame and row verdicts, as `lgsp.runner.validate` makes them."""
    typed = coerce(records, dataset)
    checked = run_row_checks(typed.frame, dataset, typed.type_errors)
    return typed.frame, np.asarray(checked.passed, dtype=bool)


def _result_pages(docs: Path, batch_id: str) -> list[Path]:
    return [p for p in (docs / "validations").rglob("*.html") if batch_id in p.parts]


def test_index_accumulates_every_batch_of_every_dataset(home: Path) -> None:
    catalog = load_catalog()
    batches = {"dossier": ("tthc_dossiers-b1", "tthc_dossiers-b2"),
               "citizen": ("population_citizens-b1", "population_citizens-b2")}
    makers = {"dossier": _dossiers, "citizen": _citizens}
    for name, batch_ids in batches.items():
        dataset = catalog.datasets[name]
        for n, batch_id in enumerate(batch_ids):
            frame, row_ok = _checked(dataset, makers[name](40, start=40 * n))
            assert row_ok.all()
            outcomes = validate_dataset(frame, row_ok, dataset, batch_id)
            assert outcomes and all(o.success for o in outcomes)

    docs = home / "gx" / "data_docs"
    index = (docs / "index.html").read_text(encoding="utf-8")
    assert "lgsp.dossier" in index and "lgsp.citizen" in index
    for batch_id in (*batches["dossier"], *batches["citizen"]):
        assert batch_id in index, f"run {batch_id} missing from the Data Docs index"
        [page] = _result_pages(docs, batch_id)
        assert page.stat().st_size > 0
    assert sorted(p.stem for p in (docs / "expectations").rglob("*.html")) == ["citizen", "dossier"]
    assert len(list((home / "gx" / "validations").rglob("*.json"))) == 4  # results kept on disk


def test_failing_batch_raises_after_its_page_is_written(home: Path) -> None:
    dataset = load_catalog().datasets["dossier"]
    good, good_ok = _checked(dataset, _dossiers(30))
    validate_dataset(good, good_ok, dataset, "tthc_dossiers-ok")
    frame, _ = _checked(dataset, _dossiers(50, start=100))
    row_ok = np.arange(len(frame)) < 10  # 80% of the rows quarantined: over the 20% allowed

    with pytest.raises(QualityError, match=r"^dataset dossier, batch tthc_dossiers-bad: 1 expectation\(s\) failed: "
                                           r"expect_column_values_to_be_in_set\(_row_ok\) unexpected=40") as failure:
        validate_dataset(frame, row_ok, dataset, "tthc_dossiers-bad")

    docs = home / "gx" / "data_docs"
    [page] = _result_pages(docs, "tthc_dossiers-bad")
    assert re.search(r"Validation report: file://\S+\.html$", str(failure.value))
    assert str(failure.value).endswith(page.as_uri())
    html = page.read_text(encoding="utf-8")
    assert "_row_ok" in html and "Failed" in html
    index = (docs / "index.html").read_text(encoding="utf-8")
    assert "tthc_dossiers-bad" in index and "tthc_dossiers-ok" in index


def test_a_page_is_written_when_the_template_cache_folder_went_away(home: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled templates are cached in `gx/.jinja`, once per process. That folder removed (a restore of `gx/`
    from a backup, a home deleted) and another site published from the same process: its pages are written all
    the same, and its own folder caches them (before, every page of the process failed to render)."""
    import shutil

    dataset = load_catalog().datasets["dossier"]
    frame, row_ok = _checked(dataset, _dossiers(20))
    validate_dataset(frame, row_ok, dataset, "tthc_dossiers-c1")
    shutil.rmtree(home / "gx" / ".jinja")
    other = tmp_path / "other-home"
    monkeypatch.setenv("LGSP_HOME", str(other))
    frame, row_ok = _checked(dataset, _dossiers(20, start=20))
    validate_dataset(frame, row_ok, dataset, "tthc_dossiers-c2")
    docs = other / "gx" / "data_docs"
    [page] = _result_pages(docs, "tthc_dossiers-c2")
    assert "_row_ok" in page.read_text(encoding="utf-8")
    assert "tthc_dossiers-c2" in (docs / "index.html").read_text(encoding="utf-8")
    assert any((other / "gx" / ".jinja").iterdir()), "the templates cached beside this site"


def test_docs_folder_can_be_moved(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGSP_DATA_DOCS_DIR", str(tmp_path / "site"))
    dataset = load_catalog().datasets["dossier"]
    frame, row_ok = _checked(dataset, _dossiers(5))
    validate_dataset(frame, row_ok, dataset, "tthc_dossiers-moved")
    assert "tthc_dossiers-moved" in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert not (home / "gx" / "data_docs").exists()
    assert list((home / "gx" / "validations").rglob("*.json"))  # results stay under LGSP_HOME

    # a new site lists the pages it has, not the runs the old site's index listed
    monkeypatch.setenv("LGSP_DATA_DOCS_DIR", str(tmp_path / "site2"))
    validate_dataset(frame, row_ok, dataset, "tthc_dossiers-second")
    index = (tmp_path / "site2" / "index.html").read_text(encoding="utf-8")
    assert "tthc_dossiers-second" in index and "tthc_dossiers-moved" not in index


CONCURRENT_VALIDATOR = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from catalog import load_catalog
    from quality import validate_dataset
    from test_data_docs import _checked, _dossiers
    import great_expectations  # imported before the barrier, so both runs overlap
    tag, barrier, batches = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    dataset = load_catalog().datasets["dossier"]
    frame, row_ok = _checked(dataset, _dossiers(200))
    (barrier / tag).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.01)
    for n in range(batches):
        validate_dataset(frame, row_ok, dataset, f"tthc_dossiers-{tag}{n}")
""")


def test_two_processes_validating_the_same_dataset_at_once(home: Path, tmp_path: Path) -> None:
    barrier, batches = tmp_path / "barrier", 10
    barrier.mkdir()
    env = {**os.environ, "LGSP_HOME": str(home)}
    runs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_VALIDATOR, str(REPO), tag, str(barrier), str(batches)],
                             env=env, stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors

    docs = home / "gx" / "data_docs"
    index = (docs / "index.html").read_text(encoding="utf-8")
    expected = {f"tthc_dossiers-{tag}{n}" for tag in "ab" for n in range(batches)}
    assert set(re.findall(r"tthc_dossiers-[ab]\d+", index)) == expected
    assert len(list((docs / "validations").rglob("*.html"))) == 2 * batches


def test_the_index_reads_each_run_once_and_still_shows_which_failed(home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The index shows every listed run's outcome from a summary kept in the site's folder: a batch reads
    back only its own stored result, not every listed run's, and lists no store; a damaged summary is
    rebuilt from the results."""
    from quality.expectations import INDEX_SUMMARIES, GxPaths, _cached_context

    dataset = load_catalog().datasets["dossier"]
    context = _cached_context(GxPaths.from_env(), dataset)[0]
    reads: list[str] = []
    original = context.get_validation_result
    monkeypatch.setattr(context, "get_validation_result",
                        lambda **kw: reads.append(kw["run_id"].run_name) or original(**kw))
    store, listings = context.validation_results_store, []
    list_keys = store.list_keys
    monkeypatch.setattr(store, "list_keys", lambda: listings.append(1) or list_keys())
    frame, row_ok = _checked(dataset, _dossiers(20))
    validate_dataset(frame, row_ok, dataset, "tthc_dossiers-ok0")
    assert listings  # the first batch lists the site as GX does, and writes the summaries
    listings.clear()
    for n in (1, 2):
        validate_dataset(frame, row_ok, dataset, f"tthc_dossiers-ok{n}")
    with pytest.raises(QualityError):
        validate_dataset(frame, np.zeros(len(frame), dtype=bool), dataset, "tthc_dossiers-bad")
    assert reads == ["tthc_dossiers-ok0", "tthc_dossiers-ok1", "tthc_dossiers-ok2", "tthc_dossiers-bad"]
    assert not listings  # from then on nothing lists the stored results: a publish costs the same at any age

    def outcomes() -> dict[str, str]:
        """run -> the outcome the index's table shows for it (GX's failed or success icon)."""
        index = (home / "gx" / "data_docs" / "index.html").read_text(encoding="utf-8")
        rows = re.findall(r"(?s)'validation_success': '(.*?)', 'run_time'.*?'run_name': '([^']+)'", index)
        return {run: ("Failed" if "ge-failed-icon" in icon else "Success" if "ge-success-icon" in icon else icon)
                for icon, run in rows}

    expected = {"tthc_dossiers-ok0": "Success", "tthc_dossiers-ok1": "Success", "tthc_dossiers-ok2": "Success",
                "tthc_dossiers-bad": "Failed"}
    assert outcomes() == expected
    (home / "gx" / "data_docs" / INDEX_SUMMARIES).write_text("{not json", encoding="utf-8")
    reads.clear()
    validate_dataset(frame, row_ok, dataset, "tthc_dossiers-ok3")
    assert sorted(reads) == sorted([*expected, "tthc_dossiers-ok3"])  # every listed run read again, once
    assert outcomes() == {**expected, "tthc_dossiers-ok3": "Success"}


def test_the_suite_page_and_the_static_assets_are_written_only_when_missing_or_changed(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch renders its own page and the index; the suite's page only when the suite changed or the page
    is gone, and GX's static assets only when one is missing or differs."""
    from great_expectations.data_context.store.html_site_store import HtmlSiteStore

    from quality.expectations import SUITE_STAMPS

    copies: list[int] = []
    copy_static_assets = HtmlSiteStore.copy_static_assets

    def counted(self: Any, *folder: Any) -> Any:
        if not folder:  # the call a build makes (the method calls itself for each subfolder)
            copies.append(1)
        return copy_static_assets(self, *folder)

    monkeypatch.setattr(HtmlSiteStore, "copy_static_assets", counted)

    def suite_text() -> str:
        return " ".join(re.sub(r"<[^>]+>", " ", suite_page.read_text(encoding="utf-8")).split())

    dataset = load_catalog().datasets["dossier"]
    frame, row_ok = _checked(dataset, _dossiers(20))
    docs = home / "gx" / "data_docs"
    suite_page = docs / "expectations" / "lgsp" / "dossier.html"
    validate_dataset(frame, row_ok, dataset, "tthc_dossiers-a0")
    font = next((docs / "static" / "fonts").rglob("*.otf"))
    assert copies == [1] and "at least 80 % of the time" in suite_text() and (docs / SUITE_STAMPS).is_file()

    suite_page.write_text("KEPT", encoding="utf-8")
    validate_dataset(frame, row_ok, dataset, "tthc_dossiers-a1")
    assert suite_page.read_text(encoding="utf-8") == "KEPT" and copies == [1]  # same suite: neither written again
    assert _result_pages(docs, "tthc_dossiers-a1")  # the batch's own page is

    size = font.stat().st_size
    font.unlink()
    validate_dataset(frame, row_ok, dataset, "tthc_dossiers-a2")
    assert copies == [1, 1] and font.stat().st_size == size  # a missing asset: copied again

    stricter = dataset.model_copy(update={"expectations": dataset.expectations.model_copy(
        update={"max_quarantine_rate": 0.05})})
    validate_dataset(frame, row_ok, stricter, "tthc_dossiers-a3")
    assert "at least 95 % of the time" in suite_text()  # the suite changed: its page shows the new one

    suite_page.unlink()
    validate_dataset(frame, row_ok, stricter, "tthc_dossiers-a4")
    assert "at least 95 % of the time" in suite_text()  # a page gone is rendered again

    suite_page.write_text("KEPT", encoding="utf-8")
    (docs / SUITE_STAMPS).write_text("{not json", encoding="utf-8")
    validate_dataset(frame, row_ok, stricter, "tthc_dossiers-a5")
    assert "at least 95 % of the time" in suite_text()  # a damaged stamp file: rendered again
    assert copies == [1, 1]
