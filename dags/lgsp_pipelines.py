"""lgsp's Airflow DAGs, generated from the catalog (catalog/*.yaml) by lgsp.dag_factory.

Thin wiring only: no logic and no I/O here; tasks call into the lgsp packages.
"""
from lgsp.dag_factory import build_dags

globals().update(build_dags())
