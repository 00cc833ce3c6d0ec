"""Where lgsp keeps its state: one working folder (LGSP_HOME) and one database URL.

Defaults (the embedded setup): `./var` under the repository, SQLite at
`var/warehouse.db`, the lake at `var/lake`, Airflow's metadata at `var/airflow`.
Set `LGSP_DATABASE_URL` (e.g. `postgresql://user@host/db`) to use PostgreSQL.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    lake_root: Path

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"


def load_settings() -> Settings:
    """Settings from the environment, with the embedded defaults."""
    home = Path(os.environ.get("LGSP_HOME") or REPO_ROOT / "var").resolve()
    url = os.environ.get("LGSP_DATABASE_URL") or f"sqlite:///{home / 'warehouse.db'}"
    lake = Path(os.environ.get("LGSP_LAKE") or home / "lake")
    return Settings(home=home, database_url=url, lake_root=lake)


def redact_url(url: str) -> str:
    """A database URL with its password replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as a placeholder
        return "<database url>"
