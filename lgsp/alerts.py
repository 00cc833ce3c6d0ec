"""Alerts: a failed or late pipeline run tells people, with what failed and a link to the run.

Two callbacks are wired into every generated DAG (lgsp.dag_factory):
  - `on_task_failure`: a task's `on_failure_callback` (its last try failed);
  - `on_run_late`: the async callback of a DAG's DeadlineAlert (the run was not
    finished `late_after_s` after it was queued; runs in the triggerer).
The lgsp_freshness DAG sends "stale" and "fresh" alerts (lgsp.freshness): a pipeline
whose last complete sync got older than its objective, and its recovery.

Each alert goes to every configured channel. Channels come from the
environment (never from files; the values are never logged):

    LGSP_ALERT_WEBHOOK_URL    POST the alert as JSON (a chat hook, an incident system)
    LGSP_ALERT_SMTP_HOST      send it by mail (port LGSP_ALERT_SMTP_PORT, default 25) to
    LGSP_ALERT_EMAIL_TO       comma-separated addresses, from LGSP_ALERT_EMAIL_FROM, and to the
                              `alert_to` of the system the alert is about (catalog/systems.yaml:
                              the team that owns that system's data; `system` and `owner` in the body)
    LGSP_ALERT_SMTP_USER / LGSP_ALERT_SMTP_PASSWORD   optional login (STARTTLS if LGSP_ALERT_SMTP_STARTTLS=1)

Example webhook body::

    {"kind": "failed", "dag_id": "lgsp_land_parcels", "run_id": "manual__2025-08-01T00:00:00+00:00",
     "task_id": "extract", "error": "FatalError: land /api/v2/parcels: 401 ...", "try_number": 4,
     "run_url": "http://127.0.0.1:8080/dags/lgsp_land_parcels/runs/manual__2025-08-01T00%3A00%3A00%2B00%3A00",
     "summary": "lgsp_land_parcels failed at extract: FatalError: ...", "at": "2025-08-01T03:12:09+00:00"}
"""
from __future__ import annotations

import asyncio
import logging
import os
import smtplib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

import requests

log = logging.getLogger("lgsp.alerts")


@dataclass(frozen=True)
class Alert:
    """What went wrong, where, and where to look."""

    kind: str  # "failed", "late", a pipeline's freshness: "stale", "fresh" (again; lgsp.freshness), "unusual_reads"...
    dag_id: str
    summary: str
    system: str | None = None  # the external system whose data it is about (its `owner` is told too)
    owner: str | None = None
    alert_to: list[str] = field(default_factory=list)  # that system's addresses, mailed too (`with_system`)
    run_id: str | None = None
    run_url: str | None = None
    dag_url: str | None = None
    task_id: str | None = None
    error: str | None = None
    try_number: int | None = None
    log_url: str | None = None
    at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def dag_url(dag_id: str) -> str:
    """The DAG's page in the Airflow UI (`[api] base_url`, default http://localhost:8080)."""
    base = os.environ.get("AIRFLOW__API__BASE_URL", "http://localhost:8080").rstrip("/")
    return f"{base}/dags/{quote(dag_id, safe='')}"


def run_url(dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI."""
    return f"{dag_url(dag_id)}/runs/{quote(run_id, safe='')}"


def _send_webhook(alert: Alert) -> None:
    url = os.environ["LGSP_ALERT_WEBHOOK_URL"]
    response = requests.post(url, json=asdict(alert), timeout=(5, 15))
    response.raise_for_status()


def recipients(alert: Alert) -> list[str]:
    """Whom a mail alert goes to: LGSP_ALERT_EMAIL_TO, and the `alert_to` of the alert's system (`with_system`)."""
    found = [a.strip() for a in os.environ.get("LGSP_ALERT_EMAIL_TO", "").split(",") if a.strip()]
    return found + [a for a in alert.alert_to if a not in found]


def with_system(alert: Alert, dag_id: str) -> Alert:
    """The alert with the system its DAG exchanges with, that system's owner (None when it has none) and the
    addresses its `alert_to` adds (catalog/systems.yaml, read once here)."""
    from dataclasses import replace

    try:
        from catalog import load_catalog

        catalog = load_catalog()
    except Exception:  # noqa: BLE001 - an alert is sent even when the catalog cannot be read
        return alert
    name = dag_id.removeprefix("lgsp_")
    system = (catalog.pipelines[name].source.system if name in catalog.pipelines
              else catalog.feeds[name.removeprefix("push_")].system if name.removeprefix("push_") in catalog.feeds
              else None)
    if name.startswith("drift_") and name.removeprefix("drift_") in catalog.sharing:
        lookup = catalog.sharing[name.removeprefix("drift_")].lookup
        system = lookup.system if lookup else None
    if system is None or system not in catalog.systems:
        return alert
    spec = catalog.systems[system]
    return replace(alert, system=system, owner=spec.owner or None, alert_to=list(spec.alert_to))


def _send_mail(alert: Alert) -> None:
    to = recipients(alert)
    if not to:
        raise ValueError("no recipient: set LGSP_ALERT_EMAIL_TO, or the system's alert_to")
    message = EmailMessage()
    message["Subject"] = f"[lgsp] {alert.summary}"[:200]
    message["From"] = os.environ.get("LGSP_ALERT_EMAIL_FROM", "lgsp@localhost")
    message["To"] = ", ".join(to)
    message.set_content("\n".join(f"{k}: {v}" for k, v in asdict(alert).items() if v is not None))
    port = int(os.environ.get("LGSP_ALERT_SMTP_PORT", "25"))
    with smtplib.SMTP(os.environ["LGSP_ALERT_SMTP_HOST"], port, timeout=15) as smtp:
        if os.environ.get("LGSP_ALERT_SMTP_STARTTLS") == "1":
            smtp.starttls()
        if os.environ.get("LGSP_ALERT_SMTP_USER"):
            smtp.login(os.environ["LGSP_ALERT_SMTP_USER"], os.environ.get("LGSP_ALERT_SMTP_PASSWORD", ""))
        smtp.send_message(message)


CHANNELS: dict[str, tuple[str, Callable[[Alert], None]]] = {
    "webhook": ("LGSP_ALERT_WEBHOOK_URL", _send_webhook),
    "smtp": ("LGSP_ALERT_SMTP_HOST", _send_mail),
}
"""Alert channels by name: (the environment variable that turns it on, the sender)."""


def configured_channels() -> list[str]:
    """The channels whose environment variable is set."""
    return [name for name, (variable, _) in CHANNELS.items() if os.environ.get(variable)]


def send(alert: Alert) -> list[str]:
    """Send `alert` to every configured channel; return those that took it.

    A channel that fails is logged (by name, never its address or credentials)
    and the others still get the alert: an alert never fails the task it reports.
    """
    delivered = []
    for name in configured_channels():
        try:
            CHANNELS[name][1](alert)
            delivered.append(name)
        except Exception as exc:  # noqa: BLE001 - one broken channel must not hide the alert from the others
            log.warning("alert channel %s failed: %s", name, type(exc).__name__)
    log.warning("ALERT %s (sent to: %s)", alert.summary, ", ".join(delivered) or "no channel configured")
    return delivered


def failure_alert(context: dict[str, Any]) -> Alert:
    """The alert for a failed task, from its Airflow context."""
    ti, dag_run = context["ti"], context.get("dag_run")
    run_id = str(getattr(dag_run, "run_id", None) or ti.run_id)
    error = context.get("exception")
    error_text = f"{type(error).__name__}: {error}" if error is not None else "unknown error (see the task log)"
    return Alert(kind="failed", dag_id=ti.dag_id, run_id=run_id, run_url=run_url(ti.dag_id, run_id),
                 dag_url=dag_url(ti.dag_id),
                 task_id=ti.task_id, error=error_text[:2000], try_number=getattr(ti, "try_number", None),
                 log_url=getattr(ti, "log_url", None),
                 summary=f"{ti.dag_id} failed at {ti.task_id}: {error_text[:300]}")


def on_task_failure(context: dict[str, Any]) -> None:
    """`on_failure_callback` of every lgsp task: the task's last try failed."""
    alert = failure_alert(context)
    send(with_system(alert, alert.dag_id))


def late_alert(context: dict[str, Any], late_after_s: float) -> Alert:
    """The alert for a run past its deadline, from the deadline callback's context."""
    run = context.get("dag_run") or {}
    dag_id, run_id = str(run.get("dag_id")), str(run.get("dag_run_id") or run.get("run_id"))
    deadline = (context.get("deadline") or {}).get("deadline_time")
    return Alert(kind="late", dag_id=dag_id, run_id=run_id, run_url=run_url(dag_id, run_id), dag_url=dag_url(dag_id),
                 error=f"not finished {late_after_s:g}s after it was queued (deadline {deadline}); "
                       f"state {run.get('state')}",
                 summary=f"{dag_id} is late: run {run_id} not finished {late_after_s:g}s after it was queued")


async def on_run_late(context: dict[str, Any], late_after_s: float = 0.0, **_: Any) -> None:
    """DeadlineAlert callback (runs in the triggerer): the run missed its deadline."""
    alert = late_alert(context, late_after_s)
    await asyncio.to_thread(lambda: send(with_system(alert, alert.dag_id)))
