"""Shared by the indicator tests: the sandbox's dossiers, documents, procedures and land parcels pulled, every
indicator computed."""
from __future__ import annotations

from catalog import Catalog, load_catalog
from indicators import compute_indicator
from lgsp import runner
from warehouse import Warehouse


def pull_and_compute(database_url: str) -> tuple[Catalog, Warehouse]:
    """Run the dossier, document, procedure and land pipelines against the sandbox, then compute every indicator."""
    catalog = load_catalog()
    for pipeline in ("tthc_dossiers", "documents", "dvcqg_procedures", "land_parcels"):
        runner.run_pipeline(pipeline)
    wh = Warehouse(database_url, catalog)
    for spec in catalog.indicators.values():
        compute_indicator(wh, spec)
    return catalog, wh
