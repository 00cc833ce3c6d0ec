"""`lgsp doctor`: is this machine ready to run lgsp for a province? Each check says what it found and what to do.

`lgsp status` says whether the data is fresh; `lgsp health` whether the systems answer; this says whether
the installation itself is sound, before anything fails at 02:00:

- **python**: 3.11 or newer;
- **catalog**: the catalog files load;
- **store**: the store answers (its kind and version) and every core table has its dataset's shape
  (a table awaiting `lgsp warehouse migrate` fails its loads);
- **secrets**: every secret the systems name (`env:VAR`) is set (never shown), or comes from an
  Airflow Connection; every system's address is set, not the sandbox's default on loopback;
- **lake**: the lake's folder is writable and its file system swaps folders atomically (compaction);
- **disk**: the file systems holding the store, the lake and the backups have room (a full disk stops
  every load);
- **backups**: the latest backup is recent, and PostgreSQL's dump tool is there for a PostgreSQL store;
- **gateway**: the gateway's key is set and its other settings are sound (`lgsp serve` refuses to start
  otherwise: the setting is named);
- **metrics**: Prometheus metrics: the gateway's GET /metrics on or off (`LGSP_METRICS_TOKEN`), and the
  folder of the textfile the lgsp_freshness DAG writes (`LGSP_METRICS_TEXTFILE`) exists;
- **airflow**: where Airflow keeps its metadata (SQLite takes one writer: PostgreSQL for production).

Errors make `lgsp doctor` exit 1; warnings do not.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from lgsp.settings import Settings, load_settings, redact_url

DISK_MIN_FREE_BYTES = 1_000_000_000  # below this (or 10% of the file system) free: a warning
DISK_MIN_FREE_SHARE = 0.10
_DEFAULTED = re.compile(r"\$\{([A-Z0-9_]+):-([^}]*)\}")
_PLAIN = re.compile(r"\$\{([A-Z0-9_]+)\}")


@dataclass
class Check:
    """One finding: `state` ok, warning or error; `said` what was found; `todo` what to do (empty when ok)."""

    area: str
    subject: str
    state: str
    said: str
    todo: str = ""


def examine(settings: Settings | None = None) -> list[Check]:
    """Every check, in the order above."""
    settings = settings or load_settings()
    version, ready = ".".join(map(str, sys.version_info[:3])), sys.version_info >= (3, 11)
    found = [Check("python", sys.executable, "ok" if ready else "error", f"Python {version}",
                   "" if ready else "lgsp needs Python 3.11 or newer")]
    catalog = _catalog(found)
    _store(found, settings, catalog)
    if catalog is not None:
        _secrets(found, catalog)
    _lake(found, settings)
    _lake_files(found, settings)
    _disk(found, settings)
    _backups(found, settings)
    _gateway(found)
    _metrics(found)
    _airflow(found, settings)
    return found


def _catalog(found: list[Check]) -> Any:
    from catalog import CatalogError, load_catalog

    try:
        catalog = load_catalog()
    except CatalogError as exc:
        found.append(Check("catalog", "catalog/*.yaml", "error", str(exc), "fix the file and field it names "
                           "(`lgsp catalog`)"))
        return None
    from catalog.loader import CATALOG_DIR
    from lgsp.catalog_check import problems
    from lgsp.plugins import load_plugins

    wrong = problems(catalog, Path(os.environ.get("LGSP_CATALOG_DIR") or CATALOG_DIR))
    broken = [p.said() for p in load_plugins() if p.error]
    if wrong or broken:
        found.append(Check("catalog", "catalog/*.yaml", "error", "; ".join([*wrong, *broken]),
                           "fix the file and field it names, or the extension's package (`lgsp catalog`)"))
        return catalog
    loaded = [p.name for p in load_plugins()]
    found.append(Check("catalog", "catalog/*.yaml", "ok", f"{len(catalog.systems)} systems, "
                       f"{len(catalog.datasets)} datasets, {len(catalog.pipelines)} pipelines"
                       + (f"; extensions: {', '.join(loaded)}" if loaded else "")))
    return catalog


def _store(found: list[Check], settings: Settings, catalog: Any) -> None:
    from warehouse.migrate import reflect, structural_steps
    from warehouse.store import make_engine

    shown = redact_url(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            version = (conn.exec_driver_sql("SELECT sqlite_version()").scalar() if engine.dialect.name == "sqlite"
                       else conn.exec_driver_sql("SHOW server_version").scalar())
            waiting = []
            for dataset in (catalog.datasets.values() if catalog is not None else []):
                if dataset.layer != "core":
                    continue
                live = reflect(conn, dataset.table_name)
                if live is not None and structural_steps(live, dataset):
                    waiting.append(dataset.name)
    except sa.exc.SQLAlchemyError as exc:
        found.append(Check("store", shown, "error", f"does not answer: {str(exc.orig or exc).strip()[:300]}",
                           "start the database, or set LGSP_DATABASE_URL to one that answers"))
        return
    finally:
        engine.dispose()
    found.append(Check("store", shown, "ok", f"{engine.dialect.name} {version} answers"))
    if waiting:
        found.append(Check("store", "core tables", "warning", f"{', '.join(waiting)} differ from their datasets' "
                           "definitions: their loads fail until migrated", "`lgsp warehouse plan`, then "
                           "`lgsp warehouse migrate DATASET`"))


def _secrets(found: list[Check], catalog: Any) -> None:
    from catalog.loader import CatalogError, expand_env

    for name, system in catalog.systems.items():
        reference = getattr(system.auth, "secret", None)
        if reference and reference.startswith("env:"):
            variable = reference[4:]
            if os.environ.get(variable):
                found.append(Check("secrets", name, "ok", f"{variable} is set"))
            else:
                found.append(Check("secrets", name, "error", f"{variable} is not set: {name}'s calls fail",
                                   f"export {variable}=... (or name an Airflow Connection: secret: conn:ID)"))
        elif reference and reference.startswith("conn:"):
            found.append(Check("secrets", name, "ok", f"from Airflow Connection {reference[5:]} (read when a task "
                               "runs)"))
        for part in ("cert", "key", "ca"):  # mutual TLS: the files must be there, the key readable by lgsp alone
            named = getattr(system.auth, part, None) or ""
            variables = [v for v, _ in _DEFAULTED.findall(named)] + _PLAIN.findall(named)
            where = f"export {variables[0]}=<its path>" if variables else "put the file there"
            try:
                path = expand_env(named)
            except CatalogError as exc:
                found.append(Check("secrets", name, "error", f"its TLS {part}: {exc}", where))
                continue
            if not path:
                continue
            if not Path(path).is_file():
                found.append(Check("secrets", name, "error", f"its TLS {part} {path} does not exist: {name}'s calls "
                                   "fail", where))
            elif part == "key" and Path(path).stat().st_mode & 0o077:
                found.append(Check("secrets", name, "warning", f"its TLS key {path} is readable by others",
                                   f"chmod 600 {path}"))
            else:
                found.append(Check("secrets", name, "ok", f"TLS {part} {path}"))
        for variable, default in _DEFAULTED.findall(str(system.endpoint or "")):
            if not os.environ.get(variable):
                found.append(Check("secrets", name, "warning", f"{variable} is not set: {name} is the default "
                                   f"address {default} (the sandbox)", f"export {variable}=<the system's address>"))


def _lake(found: list[Check], settings: Settings) -> None:
    from warehouse.lake import _exchange_dirs

    root = settings.lake_root
    probe = root / ".staging" / f"doctor-{uuid.uuid4().hex}"
    try:
        (probe / "a").mkdir(parents=True)
        (probe / "b").mkdir()
        (probe / "a" / "file").write_text("lgsp doctor")
        _exchange_dirs(probe / "a", probe / "b")
        if not (probe / "b" / "file").exists():
            raise OSError("the folders were not swapped")
    except OSError as exc:
        found.append(Check("lake", str(root), "error", f"cannot write or swap folders there: {exc}",
                           "give lgsp a writable folder on a local Linux file system (LGSP_LAKE)"))
        return
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    found.append(Check("lake", str(root), "ok", "writable; folders swap atomically (compaction, restore)"))


def _lake_files(found: list[Check], settings: Settings) -> None:
    """Does the lake hold the rows of every load the change log names? Its files are the raw layer: what
    `lgsp record`, the disclosure report, `lgsp lake conform` and a rebuild read. A file gone (removed by hand,
    a disk lost, a lake restored from an older backup) leaves the store's rows, but not their history."""
    from warehouse.lake import Lake
    from warehouse.store import make_engine, utc
    from warehouse.tables import system_tables

    tables = system_tables(sa.MetaData())
    change, batch = tables["lgsp_change"], tables["lgsp_batch"]
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("lgsp_change"):
                return
            loads = conn.execute(sa.select(change.c.dataset, change.c.batch_id, change.c.committed_at)
                                 .join(batch, batch.c.batch_id == change.c.batch_id)
                                 .where(batch.c.lake_path.is_not(None))).all()
    except sa.exc.SQLAlchemyError:
        return  # the store's own check says why
    finally:
        engine.dispose()
    lake = Lake(settings.lake_root)
    by_dataset: dict[str, list[Any]] = {}
    for load in loads:
        by_dataset.setdefault(load.dataset, []).append(load)
    missing = 0
    for dataset, written in sorted(by_dataset.items()):
        held = lake.batch_ids(dataset)
        gone = sorted((utc(w.committed_at), w.batch_id) for w in written if w.batch_id not in held)
        missing += len(gone)
        if gone:
            found.append(Check("lake", f"raw/{dataset}", "warning",
                               f"{len(gone)} of its {len(written)} loads have no lake file (committed "
                               f"{gone[0][0]:%Y-%m-%d} to {gone[-1][0]:%Y-%m-%d}, e.g. {gone[0][1]}): their rows "
                               "are in the store, but "
                               "`lgsp record` and the disclosure report cannot see those versions",
                               "put the lake back from a backup (`lgsp backup list`, `lgsp backup restore NAME`)"))
    if loads and not missing:
        found.append(Check("lake", "raw/", "ok", f"holds the rows of each of the {len(loads)} loads in the change log"))


def _disk(found: list[Check], settings: Settings) -> None:
    from lgsp.backup import backup_root

    places = {"lake": settings.lake_root, "backups": backup_root(settings)}
    if make_url(settings.database_url).get_backend_name() == "sqlite":
        places["store"] = Path(make_url(settings.database_url).database or settings.home).parent
    seen: dict[int, str] = {}
    for what, path in places.items():
        existing = next(p for p in (path, *path.parents) if p.exists())
        device = existing.stat().st_dev
        if device in seen:
            continue
        seen[device] = what
        usage = shutil.disk_usage(existing)
        share = usage.free / usage.total if usage.total else 0.0
        said = f"{usage.free / 1e9:,.1f} GB free of {usage.total / 1e9:,.1f} GB ({share:.0%}) at {existing}"
        low = usage.free < DISK_MIN_FREE_BYTES or share < DISK_MIN_FREE_SHARE
        found.append(Check("disk", what, "warning" if low else "ok", said,
                           "free space before loads fail (`lgsp lake prune`, fewer backups: LGSP_BACKUP_KEEP)"
                           if low else ""))


def _backups(found: list[Check], settings: Settings) -> None:
    from lgsp import backup

    root = backup.backup_root(settings)
    kept = backup.backups(root)
    try:
        limit = backup.max_age()
    except backup.BackupError as exc:
        found.append(Check("backups", str(root), "error", str(exc), f"fix {backup.MAX_AGE_ENV}"))
        limit = None
    if not kept:
        found.append(Check("backups", str(root), "warning", "no backup yet",
                           "`lgsp backup create`; the lgsp_backup DAG makes one a night"))
    else:
        age = datetime.now(timezone.utc) - kept[-1].created_at
        old = limit is not None and age > limit
        found.append(Check("backups", str(root), "warning" if old else "ok",
                           f"{len(kept)} kept, the latest {kept[-1].name} ({age.total_seconds() / 3600:,.1f} h ago)",
                           "is the lgsp_backup DAG running? `lgsp backup create`" if old else ""))
    if make_url(settings.database_url).get_backend_name() == "postgresql":
        try:
            tool = backup._pg_tool("pg_dump")
        except backup.BackupError as exc:
            found.append(Check("backups", "pg_dump", "error", "not installed: a PostgreSQL store cannot be backed up",
                               str(exc).split(": ", 1)[-1]))
        else:
            found.append(Check("backups", "pg_dump", "ok", tool))


def _gateway(found: list[Check]) -> None:
    from gateway.settings import KEY_VARIABLE, GatewayConfigError, load_gateway_settings

    try:
        load_gateway_settings()
    except GatewayConfigError as exc:
        named = re.match(r"[A-Z][A-Z0-9_]+", str(exc))  # the setting the message names first
        found.append(Check("gateway", named.group(0) if named else KEY_VARIABLE, "error",
                           "`lgsp serve` will not start: " + str(exc).split(" (", 1)[0], str(exc)))
        return
    found.append(Check("gateway", KEY_VARIABLE, "ok", "set"))


def _metrics(found: list[Check]) -> None:
    """Prometheus metrics (lgsp.metrics): the gateway's GET /metrics on or off, and the textfile the lgsp_freshness
    DAG writes, when one is named (its folder must exist: node_exporter's textfile directory)."""
    from lgsp.metrics import TEXTFILE_ENV, TOKEN_ENV, textfile_setting

    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        found.append(Check("metrics", TOKEN_ENV, "ok", "not set: the gateway's GET /metrics is off (set it to let "
                           "Prometheus scrape; docs/deploy.md#monitoring-with-prometheus)"))
    elif len(token) >= 16:
        found.append(Check("metrics", TOKEN_ENV, "ok", "set: the gateway serves GET /metrics to its bearer"))
    path = textfile_setting()
    if path is None:
        return
    if path.suffix != ".prom":
        found.append(Check("metrics", TEXTFILE_ENV, "error", f"{path} does not end in .prom: node_exporter's textfile "
                           "collector will not read it", f"export {TEXTFILE_ENV}=<its directory>/lgsp.prom"))
    elif not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        found.append(Check("metrics", TEXTFILE_ENV, "error", f"{path.parent} is not a folder lgsp can write: the "
                           "lgsp_freshness DAG cannot write the metrics there", "create it (node_exporter's "
                           f"--collector.textfile.directory), or fix {TEXTFILE_ENV}"))
    else:
        found.append(Check("metrics", TEXTFILE_ENV, "ok", f"the lgsp_freshness DAG writes the metrics to {path}"))


def _airflow(found: list[Check], settings: Settings) -> None:
    url = os.environ.get("LGSP_AIRFLOW_DATABASE_URL")
    if url:
        from warehouse.store import make_engine

        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa.exc.SQLAlchemyError as exc:
            found.append(Check("airflow", redact_url(url), "error", "Airflow's metadata database does not answer: "
                               f"{str(exc.orig or exc).strip()[:300]}", "start it, or fix LGSP_AIRFLOW_DATABASE_URL"))
            return
        finally:
            engine.dispose()
        found.append(Check("airflow", "metadata", "ok", f"{redact_url(url)} answers"))
        return
    found.append(Check("airflow", "metadata", "warning" if make_url(settings.database_url).get_backend_name()
                       == "postgresql" else "ok", f"SQLite at {settings.airflow_home / 'airflow.db'} (one writer: "
                       "a pilot)", "for production: LGSP_AIRFLOW_DATABASE_URL=postgresql://... (docs/deploy.md)"
                       if make_url(settings.database_url).get_backend_name() == "postgresql" else ""))


def as_dicts(found: list[Check]) -> list[dict[str, Any]]:
    return [asdict(check) for check in found]

