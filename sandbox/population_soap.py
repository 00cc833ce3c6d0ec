"""Spyne SOAP 1.1 simulator of the national population database (CSDLQG về dân cư).

Namespace ``urn:lgsp:sandbox:population``; WSDL at ``GET <base>/?wsdl``.

Operations:
    ``GetCitizen(personal_id) -> Citizen``
        Unknown id -> Client fault ``Client.NotFound``; an id that is not
        12 digits -> ``Client.InvalidArgument`` -- except that a stored
        defective row (11-digit ``cccd_length`` defect) is still returned.
    ``ListChangedCitizens(since, page, page_size, until) -> CitizenPage``
        Rows with ``since <= updated_at < until`` ordered by ``(updated_at, personal_id)``;
        ``page`` 1-based (default 1; < 1 -> ``Client.InvalidArgument``),
        ``page_size`` default 100, capped at 1000; a page past the end has no
        items. A naive ``since``/``until`` is read as UTC; an absent ``since``
        means "from the start", an absent ``until`` "to the end"; ``until``
        before ``since`` -> ``Client.InvalidArgument``.
        ``CitizenPage`` = ``items`` (repeated ``Citizen`` element, so zeep gives a
        plain list), ``page``, ``page_size``, ``total``, ``total_pages``
        (``total`` counts rows in the window; ``total_pages = ceil(total / page_size)``).

Requests are validated against the schema (lxml): malformed values, e.g. a
bad ``since``, give ``Client.SchemaValidationError``.

Example ``Citizen`` (as zeep returns it, after ``serialize_object``)::

    {'personal_id': '037190012345', 'full_name': 'Nguyễn Thị Lan',
     'birth_date': date(1990, 4, 2), 'sex': 'female', 'commune_code': '14464',
     'address': '81 Khóm 16 Phạm Thế Hiển', 'phone': '0912345678',
     'updated_at': datetime(2025, 8, 15, 2, 30, tzinfo=<UTC>)}

Faults come back as HTTP 500 with a SOAP Fault; zeep raises
``zeep.exceptions.Fault`` whose ``code`` ends with the fault code above.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sandbox import _spyne_compat  # noqa: F401  (must run before spyne is imported)
from spyne import Application, ComplexModel, Date, DateTime, Integer, Unicode, rpc
from spyne.error import Fault
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication
from spyne.service import Service

NAMESPACE = "urn:lgsp:sandbox:population"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_PID_RE = re.compile(r"\d{12}")


class Citizen(ComplexModel):
    """One person, see the module docstring for an example."""

    __namespace__ = NAMESPACE
    _type_info = [
        ("personal_id", Unicode),
        ("full_name", Unicode),
        ("birth_date", Date),
        ("sex", Unicode),
        ("commune_code", Unicode),
        ("address", Unicode),
        ("phone", Unicode),
        ("updated_at", DateTime(timezone=True)),
    ]


class CitizenPage(ComplexModel):
    """One page of changed citizens: ``items`` plus paging counters."""

    __namespace__ = NAMESPACE
    _type_info = [
        # A repeated element (not spyne's Array wrapper) so zeep gives a plain list.
        ("items", Citizen.customize(min_occurs=0, max_occurs="unbounded")),
        ("page", Integer),
        ("page_size", Integer),
        ("total", Integer),
        ("total_pages", Integer),
    ]


class _CitizenIndex:
    """Citizens sorted by ``(updated_at, personal_id)`` with a by-id lookup."""

    def __init__(self, citizens: Sequence[dict[str, Any]]) -> None:
        self.rows = sorted(citizens, key=lambda r: (r["updated_at"], r["personal_id"]))
        self.keys = [r["updated_at"].timestamp() for r in self.rows]
        self.by_id = {r["personal_id"]: r for r in self.rows}

    def get(self, personal_id: str | None) -> Citizen:
        pid = (personal_id or "").strip()
        row = self.by_id.get(pid)
        if row is not None:
            return Citizen(**row)
        if not _PID_RE.fullmatch(pid):
            raise Fault("Client.InvalidArgument", f"personal_id must be 12 digits, got {pid!r}")
        raise Fault("Client.NotFound", f"no citizen with personal_id {pid}")

    def page(self, since: datetime | None, page: int | None, page_size: int | None,
             until: datetime | None = None) -> CitizenPage:
        page = 1 if page is None else int(page)
        size = DEFAULT_PAGE_SIZE if page_size is None else int(page_size)
        if page < 1:
            raise Fault("Client.InvalidArgument", f"page must be >= 1, got {page}")
        if size < 1:
            raise Fault("Client.InvalidArgument", f"page_size must be >= 1, got {size}")
        size = min(size, MAX_PAGE_SIZE)
        start, end = self._window(since, until)
        total = end - start
        first = start + (page - 1) * size
        items = [Citizen(**r) for r in self.rows[first:min(first + size, end)]] if first < end else []
        return CitizenPage(items=items, page=page, page_size=size, total=total,
                           total_pages=math.ceil(total / size))

    def _window(self, since: datetime | None, until: datetime | None) -> tuple[int, int]:
        """Row index range ``[start, end)`` of ``since <= updated_at < until`` (naive = UTC)."""
        since = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
        until = until.replace(tzinfo=UTC) if until is not None and until.tzinfo is None else until
        if since is not None and until is not None and until < since:
            raise Fault("Client.InvalidArgument", f"until ({until.isoformat()}) is before since ({since.isoformat()})")
        start = 0 if since is None else bisect.bisect_left(self.keys, since.timestamp())
        end = len(self.rows) if until is None else bisect.bisect_left(self.keys, until.timestamp())
        return start, end


class PopulationService(Service):
    """SOAP operations; the data index is found on ``ctx.app.sandbox_index``."""

    @rpc(Unicode, _returns=Citizen, _body_style="wrapped")
    def GetCitizen(ctx, personal_id):  # noqa: N802,N805 - SOAP operation name
        """Return one citizen by CCCD number."""
        return ctx.app.sandbox_index.get(personal_id)

    @rpc(DateTime, Integer, Integer, DateTime, _returns=CitizenPage, _body_style="wrapped")
    def ListChangedCitizens(ctx, since, page, page_size, until):  # noqa: N802,N805
        """Return citizens changed at or after ``since`` and before ``until``, one page at a time."""
        return ctx.app.sandbox_index.page(since, page, page_size, until)


class _ExpectedClientFaults(logging.Filter):
    """Drop spyne's ERROR-with-traceback log for the Client faults we raise on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, Fault) and exc.faultcode in _CLIENT_FAULTS)


_CLIENT_FAULTS = frozenset({"Client.NotFound", "Client.InvalidArgument"})
_SPYNE_CLIENT_LOGGER = logging.getLogger("spyne.application.client")


def make_population_app(citizens: Sequence[dict[str, Any]]) -> WsgiApplication:
    """Build the SOAP WSGI application serving ``citizens``.

    Args:
        citizens: Ground-truth citizen dicts (8 keys each).

    Returns:
        A WSGI callable; its WSDL is at ``GET /?wsdl``.
    """
    app = Application(
        [PopulationService],
        tns=NAMESPACE,
        name="PopulationService",
        in_protocol=Soap11(validator="lxml"),
        out_protocol=Soap11(),
    )
    app.sandbox_index = _CitizenIndex(citizens)  # type: ignore[attr-defined]
    if not any(isinstance(f, _ExpectedClientFaults) for f in _SPYNE_CLIENT_LOGGER.filters):
        _SPYNE_CLIENT_LOGGER.addFilter(_ExpectedClientFaults())
    return WsgiApplication(app)
