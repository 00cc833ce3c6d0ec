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


def env_number(name: str, default: float) -> float:
    """A number of 0 or more from the environment variable `name` (unset or blank: `default`).

    Raises:
        ValueError: the variable is not a number of 0 or more (the message names it and its default).
    """
    text = os.environ.get(name, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(f"{name}={text!r}: give a number of 0 or more (default {default:g})")
    return value


def operator(by: str | None = None) -> str:
    """Who acts at the province (a decision, a report, a read of a record), as the audit names them: `by`,
    else $LGSP_OPERATOR, else $USER."""
    return by or os.environ.get("LGSP_OPERATOR") or os.environ.get("USER") or "province"
