"""Synthetic TTHC dossiers (hồ sơ) as held by the provincial one-stop system.

Example row (datetimes are aware, +07:00)::

    {'dossier_id': 'H37.01-250815-0003', 'procedure_code': '1.004227',
     'procedure_name': 'Cấp phiếu lý lịch tư pháp', 'commune_code': '14464',
     'receiving_agency': 'Sở Tư pháp',
     'received_at': datetime(2025, 8, 15, 9, 30, tzinfo=VN_TZ),
     'due_at': datetime(2025, 8, 22, 9, 30, tzinfo=VN_TZ),
     'finished_at': datetime(2025, 8, 20, 15, 2, 11, tzinfo=VN_TZ),
     'returned_at': None, 'status': 'finished', 'channel': 'online',
     'paid_online': True, 'digitised': True,
     'updated_at': datetime(2025, 8, 20, 15, 20, 11, tzinfo=VN_TZ),
     'receiving_agency_code': '000.00.31.H42', 'settlement': 'early', 'overdue': False,
     'result_digitised': True, 'portal_synced': True, 'satisfaction': None}

The last six fields are the service-quality facts the one-stop system records
(drawn from a second random stream, so the fields before them do not depend on
them): the receiving agency's code, how the dossier was settled against its due
date (``early``: finished on a local day before the due day, ``on_time``, ``late``; ``None``
while unsettled), ``overdue`` (settled late, or unsettled and past due at the
snapshot and not paused awaiting additional documents),
whether the result was digitised (``None`` while unsettled), whether
the dossier was synced to the National Public Service Portal, and the citizen's
rating after the result was returned (``satisfied``, ``neutral``,
``dissatisfied``; ``None`` when not rated). Calibrated on the articles: Ninh
Bình 77.9% online and 96.2% on time; Quảng Bình 58.77% paid online, 88.87%
digitised, 93.7% satisfied.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, time, timedelta
from typing import Any

from sandbox.common import VN_TZ, WINDOW_END_VN, WINDOW_START_VN, add_working_days, pick_defects
from sandbox.communes import UNKNOWN_COMMUNE, ninh_binh_communes
from sandbox.procedures import COMMUNE_AGENCY_BASE, COMMUNE_PROCEDURES, DEPARTMENT_PROCEDURES, DEPARTMENTS

DOSSIER_FIELDS = (
    "dossier_id", "procedure_code", "procedure_name", "commune_code", "receiving_agency",
    "received_at", "due_at", "finished_at", "returned_at", "status", "channel",
    "paid_online", "digitised", "updated_at",
    "receiving_agency_code", "settlement", "overdue", "result_digitised", "portal_synced", "satisfaction",
)
"""The fields of a dossier, in JSON order."""

DOSSIER_DEFECT_KINDS = ("due_before_received", "channel_unknown", "commune_unknown", "finished_before_received")
STATUSES = ("received", "processing", "finished", "returned")
STATUS_WEIGHTS = (6, 14, 45, 35)
DEPARTMENT_SHARE = 0.20
ONLINE_SHARE = 0.779
PAID_ONLINE_SHARE = 0.5877
DIGITISED_SHARE = 0.8887
ON_TIME_SHARE = 0.962
RESULT_DIGITISED_SHARE = 0.8887
PORTAL_SYNCED_SHARE = 0.995
PAST_DUE_FLAGGED_SHARE = 0.15
"""Of the unsettled dossiers past due at the snapshot, those flagged overdue; the rest are paused awaiting
the citizen's additional documents (chờ bổ sung), which stops the clock."""
RATED_SHARE = 0.6
SATISFACTION_WEIGHTS = {"satisfied": 93.7, "neutral": 4.8, "dissatisfied": 1.5}
SNAPSHOT_VN = WINDOW_END_VN
"""When the one-stop system's figures were taken: an unsettled dossier due before it is overdue."""
BATCH_SYNC_SHARE = 0.08
"""Share of dossiers last touched by the 23:00 nightly sync (many equal ``updated_at``)."""
_LATEST_EVENT = WINDOW_END_VN - timedelta(hours=1)


def _business_instant(rng: random.Random) -> datetime:
    """A weekday, 07:30-11:30 or 13:30-17:00 local, within the window."""
    days = (WINDOW_END_VN.date() - WINDOW_START_VN.date()).days
    while True:
        day = WINDOW_START_VN.date() + timedelta(days=rng.randint(0, days))
        if day.weekday() < 5:
            break
    minute = rng.choice((rng.randint(7 * 60 + 30, 11 * 60 + 29), rng.randint(13 * 60 + 30, 16 * 60 + 59)))
    return datetime.combine(day, time(minute // 60, minute % 60, rng.randint(0, 59)), VN_TZ)


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    span = max(0, int((end - start).total_seconds()))
    return start + timedelta(seconds=rng.randint(0, span))


def _timeline(rng: random.Random, received: datetime) -> dict[str, Any]:
    """Due date, status and finish/return times, consistent with the snapshot time."""
    due = add_working_days(received, rng.randint(1, 15))
    status = rng.choices(STATUSES, STATUS_WEIGHTS)[0]
    finished = returned = None
    if status in ("finished", "returned"):
        if rng.random() < ON_TIME_SHARE:
            finished = _between(rng, received + timedelta(minutes=10), due)
        else:
            finished = _between(rng, due + timedelta(hours=1), due + timedelta(days=5))
        if finished > _LATEST_EVENT:  # not finished yet at snapshot time
            status, finished = "processing", None
    if status == "returned" and finished is not None:
        returned = _between(rng, finished + timedelta(minutes=10), finished + timedelta(days=3))
        if returned > _LATEST_EVENT:
            status, returned = "finished", None
    return {"due_at": due, "status": status, "finished_at": finished, "returned_at": returned}


def _apply_defect(rng: random.Random, row: dict[str, Any], kind: str) -> None:
    if kind == "due_before_received":
        row["due_at"] = row["received_at"] - timedelta(days=rng.randint(1, 5))
    elif kind == "channel_unknown":
        row["channel"], row["paid_online"] = "fax", False
    elif kind == "commune_unknown":
        row["commune_code"] = UNKNOWN_COMMUNE
    elif kind == "finished_before_received":
        if row["status"] not in ("finished", "returned"):
            row["status"], row["returned_at"] = "finished", None
        row["finished_at"] = row["received_at"] - timedelta(minutes=rng.randint(30, 2880))


def _updated_at(rng: random.Random, row: dict[str, Any]) -> datetime:
    events = [t for t in (row["received_at"], row["finished_at"], row["returned_at"]) if t is not None]
    latest = max(events)
    if row["status"] == "processing":  # last handled some time after reception
        latest = _between(rng, latest, min(latest + timedelta(hours=72), _LATEST_EVENT))
    updated = min(latest + timedelta(minutes=rng.randint(1, 30)), WINDOW_END_VN)
    if rng.random() < BATCH_SYNC_SHARE:
        nightly = datetime.combine(updated.date(), time(23, 0), VN_TZ)
        if nightly >= updated:
            updated = nightly
    return updated


DEPARTMENT_UNIT_CODES = {"01": "000.00.31.H42", "02": "000.00.32.H42", "03": "000.00.33.H42",
                         "04": "000.00.34.H42", "05": "000.00.35.H42", "06": "000.00.36.H42",
                         "07": "000.00.37.H42", "08": "000.00.38.H42", "09": "000.00.40.H42",
                         "10": "000.00.39.H42"}
"""Department (``sandbox.procedures.DEPARTMENTS``) -> agency code, the codes of :mod:`sandbox.documents`."""


def agency_unit_code(department: str | None, commune_code: str) -> str:
    """The receiving agency's code: ``'000.00.31.H42'`` (Sở Tư pháp) or ``'000.14464.H42'`` (a commune's UBND)."""
    return DEPARTMENT_UNIT_CODES[department] if department else f"000.{commune_code}.H42"


def _settlement(row: dict[str, Any]) -> str | None:
    """``early`` (finished before the due day, local time), ``on_time``, ``late``, or ``None`` while unsettled."""
    finished, due = row["finished_at"], row["due_at"]
    if finished is None:
        return None
    if finished > due:
        return "late"
    return "early" if finished.astimezone(VN_TZ).date() < due.astimezone(VN_TZ).date() else "on_time"


def _service_quality(rng: random.Random, row: dict[str, Any]) -> dict[str, Any]:
    """The service-quality fields of a dossier (see the module docstring), from their own random stream."""
    settlement = _settlement(row)
    rated = row["returned_at"] is not None and rng.random() < RATED_SHARE
    return {
        "settlement": settlement,
        "overdue": settlement == "late" or (settlement is None and row["due_at"] < SNAPSHOT_VN
                                            and rng.random() < PAST_DUE_FLAGGED_SHARE),
        "result_digitised": None if settlement is None else rng.random() < RESULT_DIGITISED_SHARE,
        "portal_synced": rng.random() < PORTAL_SYNCED_SHARE,
        "satisfaction": (rng.choices(tuple(SATISFACTION_WEIGHTS), tuple(SATISFACTION_WEIGHTS.values()))[0]
                         if rated else None),
    }


def make_dossiers(seed: int, count: int, defect_rate: float = 0.01) -> list[dict[str, Any]]:
    """Generate ``count`` dossiers deterministically (same arguments => same list).

    Args:
        seed: Seed of the private ``random.Random``.
        count: Number of rows.
        defect_rate: Fraction of rows carrying exactly one defect.

    Returns:
        Rows sorted by ``(updated_at, dossier_id)``; see the module docstring.
    """
    return make_dossiers_with_defects(seed, count, defect_rate)[0]


def make_dossiers_with_defects(
    seed: int, count: int, defect_rate: float = 0.01
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Like :func:`make_dossiers`, also returning ``{dossier_id: defect_kind}``.

    Example second value: ``{'H37.57-250903-0002': 'channel_unknown'}``.
    """
    rng = random.Random(seed)
    quality_rng = random.Random(f"{seed}:service-quality")
    communes = ninh_binh_communes()
    defects = pick_defects(rng, count, defect_rate, DOSSIER_DEFECT_KINDS)
    rows: list[dict[str, Any]] = []
    agency_codes: list[str] = []
    for index in range(count):
        commune_index = rng.randrange(len(communes))
        commune_code, commune_name = communes[commune_index]
        if rng.random() < DEPARTMENT_SHARE:
            proc = rng.choice(DEPARTMENT_PROCEDURES)
            agency_code, agency = proc.department, DEPARTMENTS[proc.department]
        else:
            proc = rng.choice(COMMUNE_PROCEDURES)
            agency_code = f"{COMMUNE_AGENCY_BASE + commune_index % 80:02d}"
            agency = f"UBND {commune_name}"
        received = _business_instant(rng)
        online = rng.random() < ONLINE_SHARE
        row: dict[str, Any] = {
            "dossier_id": "",
            "procedure_code": proc.code,
            "procedure_name": proc.name,
            "commune_code": commune_code,
            "receiving_agency": agency,
            "received_at": received,
            **_timeline(rng, received),
            "channel": "online" if online else "paper",
            "paid_online": online and rng.random() < PAID_ONLINE_SHARE,
            "digitised": rng.random() < DIGITISED_SHARE,
        }
        if index in defects:
            _apply_defect(rng, row, defects[index])
        row["updated_at"] = _updated_at(rng, row)
        row["receiving_agency_code"] = agency_unit_code(proc.department, commune_code)
        row.update(_service_quality(quality_rng, row))
        rows.append({k: row[k] for k in DOSSIER_FIELDS})
        agency_codes.append(agency_code)

    # Sequence numbers follow reception order per (agency, day), like a real register.
    order = sorted(range(count), key=lambda i: (rows[i]["received_at"], i))
    sequences: dict[tuple[str, str], int] = defaultdict(int)
    defect_by_id: dict[str, str] = {}
    for i in order:
        day = rows[i]["received_at"].strftime("%y%m%d")
        sequences[(agency_codes[i], day)] += 1
        rows[i]["dossier_id"] = f"H37.{agency_codes[i]}-{day}-{sequences[(agency_codes[i], day)]:04d}"
        if i in defects:
            defect_by_id[rows[i]["dossier_id"]] = defects[i]
    rows.sort(key=lambda r: (r["updated_at"], r["dossier_id"]))
    return rows, defect_by_id
