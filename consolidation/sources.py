"""Pull the three legacy systems through the project's connectors and land every page as received.

The systems and operations are declared in ``catalog/merger.yaml`` and
validated by the catalog's own models (:class:`SystemSpec`, :class:`SourceSpec`):
the same auth registry, paginator registry, retries with backoff, circuit
breaker, size cap and message log as every pipeline. They are kept out of the
pipelines catalog because the consolidation is one run over all three systems,
not one DAG per system.

Example:
    >>> merger = load_merger_catalog()
    >>> list(merger.systems), list(merger.sources)
    (['legacy_ninh_binh', 'legacy_nam_dinh', 'legacy_ha_nam'], ['citizen', 'enterprise', 'dossier'])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from catalog.models import SourceSpec, SystemSpec
from connectors import MessageLog, iter_pages, open_transport
from warehouse.lake import Lake

MERGER_CATALOG = Path(__file__).resolve().parent.parent / "catalog" / "merger.yaml"

__all__ = ["MERGER_CATALOG", "MergerCatalog", "MergerCatalogError", "Pulled", "load_merger_catalog", "pull_system"]


class MergerCatalogError(ValueError):
    """``catalog/merger.yaml`` is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class MergerCatalog:
    """The legacy systems (in source-priority order) and one source per record kind."""

    systems: dict[str, SystemSpec]
    sources: dict[str, SourceSpec]

    def source(self, system: str, kind: str) -> SourceSpec:
        """The kind's source bound to ``system``."""
        return self.sources[kind].model_copy(update={"system": system})


@dataclass
class Pulled:
    """What one pull of one system and kind received: the records and the landed pages."""

    system: str
    kind: str
    records: list[dict[str, Any]]
    pages: int
    landing: Path


def _validated(path: Path, section: str, model: Any, bodies: Any, extra: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(bodies, dict) or not bodies:
        raise MergerCatalogError(f"{path}: expected a non-empty mapping under '{section}:'")
    loaded = {}
    for name, body in bodies.items():
        try:
            loaded[name] = model.model_validate({**extra(name), **(body or {})})
        except ValidationError as exc:
            problems = "; ".join(f"{section}.{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise MergerCatalogError(f"{path}: {problems}") from None
    return loaded


def load_merger_catalog(path: Path = MERGER_CATALOG) -> MergerCatalog:
    """Load and validate the legacy systems' declarations.

    Raises:
        MergerCatalogError: Not YAML, a section missing, or a field invalid (named as
            ``catalog/merger.yaml: systems.legacy_ha_nam.auth.type: ...``).
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MergerCatalogError(f"{path}: cannot read the merger catalog: {exc}") from exc
    systems = _validated(path, "systems", SystemSpec, document.get("systems"), lambda name: {"name": name})
    sources = _validated(path, "sources", SourceSpec, document.get("sources"),
                         lambda name: {"system": next(iter(systems))})
    return MergerCatalog(systems, sources)


def pull_system(merger: MergerCatalog, system: str, kind: str, lake: Lake, run_id: str,
                log: MessageLog | None = None) -> Pulled:
    """Page through one system's listing of ``kind``, landing each page before asking for the next.

    Args:
        merger: The loaded merger catalog.
        system: e.g. ``"legacy_ha_nam"``.
        kind: ``"citizen"``, ``"enterprise"`` or ``"dossier"``.
        lake: Where pages land: ``landing/merger_<system>_<kind>/<run_id>/page-00001.jsonl``.
        run_id: The consolidation run.
        log: Message log to record the exchanges in (default: the system's own, in memory).

    Returns:
        The records in the order received and where they landed.

    Raises:
        connectors.ConnectorError: The system failed fatally or ran out of retries (names system and operation).
    """
    spec, source = merger.systems[system], merger.source(system, kind)
    transport = open_transport(spec, source, log=log)
    pipeline = f"merger_{system}_{kind}"
    records: list[dict[str, Any]] = []
    pages = 0
    try:
        for page in iter_pages(spec, source, transport, since=None):
            lake.write_page(pipeline, run_id, page.number, page.records)
            records.extend(page.records)
            pages += 1
    finally:
        transport.close()
    lake.write_manifest(pipeline, run_id, {"system": system, "kind": kind, "pages": pages, "records": len(records)})
    return Pulled(system, kind, records, pages, lake.batch_dir(pipeline, run_id))
