"""The declarative catalog: systems, datasets, pipelines and indicators as YAML + typed models."""
from catalog.loader import CatalogError, load_catalog, resolve_endpoint
from catalog.models import Catalog, DatasetSpec, IndicatorSpec, PipelineSpec, SystemSpec

__all__ = [
    "Catalog", "CatalogError", "DatasetSpec", "IndicatorSpec", "PipelineSpec",
    "SystemSpec", "load_catalog", "resolve_endpoint",
]
