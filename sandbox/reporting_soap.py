"""Spyne SOAP 1.1 simulator of the government reporting information system (push), WS-Security protected.

Namespace ``urn:lgsp:sandbox:reporting``; WSDL at ``GET <base>/?wsdl``; every
POST needs a WS-Security UsernameToken (see :mod:`sandbox.wsse`).

Operation ``SubmitIndicatorReport(report: IndicatorReport) -> Receipt``.
``report_id`` is the idempotency key:

* a new id is applied once and gets ``status='accepted'`` and a new ``receipt_no``;
* the same id with identical content is a replay: the original ``receipt_no``
  and ``received_at`` come back with ``status='duplicate'``, nothing is applied;
* the same id with different content -> ``Client.Conflict``;
* ``numerator > denominator``, a negative count, ``value`` outside 0..1, a bad
  ``period``/``unit_level``/``unit_code``/``province_code`` -> ``Client.InvalidArgument``
  naming the field; a missing required element -> ``Client.SchemaValidationError``.

Example ``IndicatorReport`` (zeep keyword arguments)::

    {'report_id': 'online_submission_rate:v1:commune:14464:2025-08', 'province_code': '37',
     'indicator_code': 'online_submission_rate', 'indicator_version': 1,
     'unit_level': 'commune', 'unit_code': '14464', 'period': '2025-08',
     'numerator': 78, 'denominator': 100, 'value': 0.78,
     'computed_at': datetime(2025, 9, 1, 1, 0, tzinfo=UTC)}

Example ``Receipt``: ``{'receipt_no': 'TN37-000001', 'status': 'accepted',
'received_at': datetime(2025, 9, 1, 1, 0, 3, tzinfo=<UTC>)}``.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sandbox import _spyne_compat  # noqa: F401  (must run before spyne is imported)
from spyne import Application, ComplexModel, DateTime, Double, Integer, Unicode, rpc
from spyne.error import Fault
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication
from spyne.service import Service

from sandbox.communes import PROVINCE_CODE, commune_codes
from sandbox.wsse import WsgiApp, quiet_client_faults, require_username_token

NAMESPACE = "urn:lgsp:sandbox:reporting"
UNIT_LEVELS = ("province", "commune")
PERIOD_RE = re.compile(r"\d{4}(-(0[1-9]|1[0-2])|-Q[1-4])?")
"""``'2025'``, ``'2025-08'`` or ``'2025-Q3'``."""
REPORT_FIELDS = (
    "report_id", "province_code", "indicator_code", "indicator_version", "unit_level", "unit_code",
    "period", "numerator", "denominator", "value", "computed_at",
)
_CLIENT_FAULTS = ("Client.InvalidArgument", "Client.Conflict")
_REQUIRED = {"min_occurs": 1, "nillable": False}


class IndicatorReport(ComplexModel):
    """One indicator value for one unit and period; ``report_id`` is the idempotency key."""

    __namespace__ = NAMESPACE
    _type_info = [
        ("report_id", Unicode(**_REQUIRED)),
        ("province_code", Unicode(**_REQUIRED)),
        ("indicator_code", Unicode(**_REQUIRED)),
        ("indicator_version", Integer(**_REQUIRED)),
        ("unit_level", Unicode(**_REQUIRED)),
        ("unit_code", Unicode(**_REQUIRED)),
        ("period", Unicode(**_REQUIRED)),
        ("numerator", Integer(**_REQUIRED)),
        ("denominator", Integer(**_REQUIRED)),
        ("value", Double(min_occurs=0, nillable=True)),
        ("computed_at", DateTime(timezone=True, **_REQUIRED)),
    ]


class Receipt(ComplexModel):
    """The reporting system's acknowledgement of one report."""

    __namespace__ = NAMESPACE
    _type_info = [
        ("receipt_no", Unicode),
        ("status", Unicode),
        ("received_at", DateTime(timezone=True)),
    ]


class ReportingInbox:
    """What the reporting system has received (thread-safe), for tests to inspect.

    Attributes:
        reports: ``{report_id: report}`` with :data:`REPORT_FIELDS` keys
            (``computed_at`` aware UTC, ``value`` float or ``None``).
        receipts: ``{report_id: {'receipt_no': ..., 'received_at': ...}}``.
        apply_counts: How many times each report was applied (1 when idempotency holds).
        replays: Number of identical resubmissions answered with ``duplicate``.
    """

    def __init__(self) -> None:
        self.reports: dict[str, dict[str, Any]] = {}
        self.receipts: dict[str, dict[str, Any]] = {}
        self.apply_counts: Counter[str] = Counter()
        self.replays = 0
        self._lock = threading.Lock()

    def submit(self, report: dict[str, Any]) -> dict[str, Any]:
        """Apply ``report`` once; return ``{'receipt_no', 'status', 'received_at'}``."""
        report_id = report["report_id"]
        with self._lock:
            known = self.reports.get(report_id)
            if known is not None:
                if known != report:
                    changed = sorted(k for k in REPORT_FIELDS if known[k] != report[k])
                    raise Fault("Client.Conflict", f"report_id {report_id!r} was already submitted with "
                                                   f"different content (differs in: {', '.join(changed)})")
                self.replays += 1
                return {**self.receipts[report_id], "status": "duplicate"}
            self.reports[report_id] = report
            self.apply_counts[report_id] += 1
            receipt = {"receipt_no": f"TN37-{len(self.reports):06d}", "received_at": datetime.now(UTC)}
            self.receipts[report_id] = receipt
            return {**receipt, "status": "accepted"}


def _invalid(field: str, problem: str) -> Fault:
    return Fault("Client.InvalidArgument", f"{field} {problem}")


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``Client.InvalidArgument`` naming the first bad field of ``report``."""
    if not report["report_id"].strip():
        raise _invalid("report_id", "must not be empty")
    if report["province_code"] != f"{PROVINCE_CODE:02d}":
        raise _invalid("province_code", f"{report['province_code']!r} is not this account's province (37)")
    if not PERIOD_RE.fullmatch(report["period"]):
        raise _invalid("period", f"{report['period']!r} is not YYYY, YYYY-MM or YYYY-Qn")
    if report["unit_level"] not in UNIT_LEVELS:
        raise _invalid("unit_level", f"{report['unit_level']!r} is not one of {UNIT_LEVELS}")
    unit_ok = (report["unit_code"] == report["province_code"] if report["unit_level"] == "province"
               else report["unit_code"] in commune_codes())
    if not unit_ok:
        raise _invalid("unit_code", f"{report['unit_code']!r} is not a {report['unit_level']} of province 37")
    if report["denominator"] < 0:
        raise _invalid("denominator", f"must be >= 0, got {report['denominator']}")
    if report["numerator"] < 0:
        raise _invalid("numerator", f"must be >= 0, got {report['numerator']}")
    if report["numerator"] > report["denominator"]:
        raise _invalid("numerator", f"({report['numerator']}) exceeds denominator ({report['denominator']})")
    value = report["value"]
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise _invalid("value", f"must be within 0..1 (or absent), got {value}")


def _as_dict(report: IndicatorReport) -> dict[str, Any]:
    row = {k: getattr(report, k) for k in REPORT_FIELDS}
    if row["computed_at"].tzinfo is None:
        raise _invalid("computed_at", "needs a UTC offset")
    row["computed_at"] = row["computed_at"].astimezone(UTC)
    row["value"] = None if row["value"] is None else float(row["value"])
    return row


class ReportingService(Service):
    """SOAP operations; the inbox is found on ``ctx.app.sandbox_inbox``."""

    @rpc(IndicatorReport.customize(min_occurs=1, nillable=False), _returns=Receipt, _body_style="wrapped")
    def SubmitIndicatorReport(ctx, report):  # noqa: N802,N805 - SOAP operation name
        """Accept one indicator report (idempotent on ``report_id``)."""
        row = _as_dict(report)
        validate_report(row)
        return Receipt(**ctx.app.sandbox_inbox.submit(row))


def make_reporting_app(inbox: ReportingInbox, username: str, password: str) -> WsgiApp:
    """Build the WS-Security protected SOAP WSGI application storing reports in ``inbox``.

    Args:
        inbox: Where accepted reports land (inspect it in tests).
        username: The UsernameToken user the service accepts.
        password: Its password (text or digest).

    Returns:
        A WSGI callable; its WSDL is at ``GET /?wsdl``.
    """
    app = Application(
        [ReportingService],
        tns=NAMESPACE,
        name="ReportingService",
        in_protocol=Soap11(validator="lxml"),
        out_protocol=Soap11(),
    )
    app.sandbox_inbox = inbox  # type: ignore[attr-defined]
    quiet_client_faults(_CLIENT_FAULTS)
    return require_username_token(WsgiApplication(app), username, password)
