"""Spyne SOAP 1.1 simulator of the civil-status registry (CSDL hộ tịch), WS-Security protected.

Namespace ``urn:lgsp:sandbox:civil-status``; WSDL at ``GET <base>/?wsdl`` (no
authentication); every POST needs a WS-Security UsernameToken (see
:mod:`sandbox.wsse`), else ``Client.Authentication``.

Operations:
    ``ListCivilStatusEvents(since, until, page_token, page_size) -> EventPage``
        Rows with ``since <= updated_at < until`` (both optional, both must
        carry a UTC offset) ordered by ``(updated_at, event_id)``. ``page_size``
        defaults to 100 and is capped at 1000. The first call has no
        ``page_token``; each page gives the token of the next one, absent on
        the last page. ``EventPage`` = ``items`` (repeated
        ``CivilStatusEvent``, so zeep gives a plain list), ``next_page_token``,
        ``total`` (rows in the whole window). A token is opaque and bound to its
        ``(since, until)`` window: a token from another window, a broken token,
        a naive timestamp, ``until < since`` or ``page_size < 1`` give
        ``Client.InvalidArgument`` naming the parameter.
    ``GetCivilStatusEvent(event_id) -> CivilStatusEvent``
        Unknown id -> ``Client.NotFound``.
    ``ListHouseholdMembers(since, until, page_token, page_size) -> HouseholdMemberPage``
        Household memberships (:mod:`sandbox.households`), paged exactly as
        ``ListCivilStatusEvents``, ordered by ``(updated_at, household_id,
        personal_id)``; ``items`` are ``HouseholdMember`` (the key is the pair
        ``household_id``, ``personal_id``: who moved has a row in each household).

Example ``CivilStatusEvent`` (as zeep returns it, after ``serialize_object``)::

    {'event_id': 'HT37-2025-000412', 'event_type': 'birth', 'registration_no': '17/2025',
     'registered_on': date(2025, 8, 14), 'event_date': date(2025, 7, 30),
     'personal_id': '037325004211', 'full_name': 'Trần Ngọc Anh', 'sex': 'female',
     'birth_date': date(2025, 7, 30), 'spouse_personal_id': None, 'commune_code': '14464',
     'updated_at': datetime(2025, 8, 14, 2, 41, 7, tzinfo=<UTC>)}
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sandbox import _spyne_compat  # noqa: F401  (must run before spyne is imported)
from spyne import Application, ComplexModel, Date, DateTime, Integer, Unicode, rpc
from spyne.error import Fault
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication
from spyne.service import Service

from sandbox.wsse import WsgiApp, quiet_client_faults, require_username_token

NAMESPACE = "urn:lgsp:sandbox:civil-status"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_CLIENT_FAULTS = ("Client.NotFound", "Client.InvalidArgument")


class CivilStatusEvent(ComplexModel):
    """One registered birth, marriage or death; see the module docstring for an example."""

    __namespace__ = NAMESPACE
    _type_info = [
        ("event_id", Unicode),
        ("event_type", Unicode),
        ("registration_no", Unicode),
        ("registered_on", Date),
        ("event_date", Date),
        ("personal_id", Unicode),
        ("full_name", Unicode),
        ("sex", Unicode),
        ("birth_date", Date),
        ("spouse_personal_id", Unicode),
        ("commune_code", Unicode),
        ("updated_at", DateTime(timezone=True)),
    ]


class HouseholdMember(ComplexModel):
    """One person's membership of one household (hộ); ``left_on`` and ``leave_reason`` once they left."""

    __namespace__ = NAMESPACE
    _type_info = [
        ("household_id", Unicode),
        ("personal_id", Unicode),
        ("full_name", Unicode),
        ("sex", Unicode),
        ("birth_date", Date),
        ("relation", Unicode),
        ("joined_on", Date),
        ("left_on", Date),
        ("leave_reason", Unicode),
        ("head_personal_id", Unicode),
        ("commune_code", Unicode),
        ("updated_at", DateTime(timezone=True)),
    ]


class HouseholdMemberPage(ComplexModel):
    """One page of memberships plus the token of the next page (absent on the last)."""

    __namespace__ = NAMESPACE
    _type_info = [
        ("items", HouseholdMember.customize(min_occurs=0, max_occurs="unbounded")),
        ("next_page_token", Unicode(min_occurs=0)),
        ("total", Integer),
    ]


class EventPage(ComplexModel):
    """One page of events plus the token of the next page (absent on the last)."""

    __namespace__ = NAMESPACE
    _type_info = [
        ("items", CivilStatusEvent.customize(min_occurs=0, max_occurs="unbounded")),
        ("next_page_token", Unicode(min_occurs=0)),
        ("total", Integer),
    ]


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise Fault("Client.InvalidArgument", f"{name} needs a UTC offset, e.g. 2025-08-01T00:00:00+07:00")
    return value


def _window_tag(since: datetime | None, until: datetime | None) -> str:
    """Short digest of the window a page token belongs to."""
    key = f"{since.timestamp() if since else '-'}|{until.timestamp() if until else '-'}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def encode_page_token(offset: int, since: datetime | None, until: datetime | None) -> str:
    """Opaque token, e.g. ``'MTAwOjNmYTEuLi4'`` for offset 100 of a window."""
    raw = f"{offset}:{_window_tag(since, until)}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, since: datetime | None, until: datetime | None) -> int:
    """Offset stored in ``token``; ``Client.InvalidArgument`` if broken or from another window."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        offset_text, tag = raw.split(":")
        offset = int(offset_text)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise Fault("Client.InvalidArgument", f"page_token {token!r} is not a token this service issued") from exc
    if tag != _window_tag(since, until) or offset < 0:
        raise Fault("Client.InvalidArgument",
                    f"page_token {token!r} belongs to another since/until window; restart without a token")
    return offset


class _Index:
    """Rows sorted by ``(updated_at, key...)``, served a page at a time as ``page_model`` of ``model``."""

    def __init__(self, rows: Sequence[dict[str, Any]], key: tuple[str, ...], model: type[ComplexModel],
                 page_model: type[ComplexModel]) -> None:
        self.key = key
        self.rows = sorted(rows, key=self._order)
        self.keys = [r["updated_at"].timestamp() for r in self.rows]
        self.model, self.page_model = model, page_model
        self.lock = threading.Lock()

    def _order(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["updated_at"], *(row[k] for k in self.key))

    def correct(self, key: tuple[Any, ...], **changes: Any) -> dict[str, Any]:
        """The registry corrects one row (the dict the ground truth holds too): ``changes`` applied, ``updated_at``
        set to now unless given, so the next incremental sync brings it. Returns the row."""
        with self.lock:
            row = next(r for r in self.rows if tuple(r[k] for k in self.key) == tuple(key))
            row.update({"updated_at": datetime.now(timezone.utc), **changes})
            rows = sorted(self.rows, key=self._order)
            self.rows, self.keys = rows, [r["updated_at"].timestamp() for r in rows]
        return row

    def page(self, since: datetime | None, until: datetime | None, page_token: str | None,
             page_size: int | None) -> ComplexModel:
        since, until = _aware("since", since), _aware("until", until)
        if since is not None and until is not None and until < since:
            raise Fault("Client.InvalidArgument", f"until ({until.isoformat()}) is before since ({since.isoformat()})")
        size = DEFAULT_PAGE_SIZE if page_size is None else int(page_size)
        if size < 1:
            raise Fault("Client.InvalidArgument", f"page_size must be >= 1, got {size}")
        size = min(size, MAX_PAGE_SIZE)
        with self.lock:  # a snapshot: `correct` replaces both lists
            rows, keys = self.rows, self.keys
        start = 0 if since is None else bisect.bisect_left(keys, since.timestamp())
        end = len(rows) if until is None else bisect.bisect_left(keys, until.timestamp())
        offset = decode_page_token(page_token, since, until) if page_token else 0
        if offset > end - start:
            raise Fault("Client.InvalidArgument", f"page_token {page_token!r} points past the end of the window")
        first = start + offset
        last = min(first + size, end)
        items = [self.model(**r) for r in rows[first:last]]
        next_token = encode_page_token(last - start, since, until) if last < end else None
        return self.page_model(items=items, next_page_token=next_token, total=end - start)


class _EventIndex(_Index):
    """Events sorted by ``(updated_at, event_id)`` with a by-id lookup."""

    def __init__(self, events: Sequence[dict[str, Any]]) -> None:
        super().__init__(events, ("event_id",), CivilStatusEvent, EventPage)
        self.by_id = {r["event_id"]: r for r in self.rows}

    def get(self, event_id: str | None) -> CivilStatusEvent:
        row = self.by_id.get((event_id or "").strip())
        if row is None:
            raise Fault("Client.NotFound", f"no civil-status event with event_id {event_id!r}")
        return CivilStatusEvent(**row)


class CivilStatusService(Service):
    """SOAP operations; the data indexes are found on ``ctx.app.sandbox_index`` and ``ctx.app.sandbox_households``."""

    @rpc(DateTime, DateTime, Unicode, Integer, _returns=EventPage, _body_style="wrapped")
    def ListCivilStatusEvents(ctx, since, until, page_token, page_size):  # noqa: N802,N805
        """Return events changed in ``[since, until)``, one page per call."""
        return ctx.app.sandbox_index.page(since, until, page_token, page_size)

    @rpc(Unicode, _returns=CivilStatusEvent, _body_style="wrapped")
    def GetCivilStatusEvent(ctx, event_id):  # noqa: N802,N805 - SOAP operation name
        """Return one event by id, e.g. ``'HT37-2025-000412'``."""
        return ctx.app.sandbox_index.get(event_id)

    @rpc(DateTime, DateTime, Unicode, Integer, _returns=HouseholdMemberPage, _body_style="wrapped")
    def ListHouseholdMembers(ctx, since, until, page_token, page_size):  # noqa: N802,N805
        """Return household memberships changed in ``[since, until)``, one page per call."""
        return ctx.app.sandbox_households.page(since, until, page_token, page_size)


def household_register(households: Sequence[dict[str, Any]] | _Index) -> _Index:
    """The household memberships as ``ListHouseholdMembers`` serves them (``correct`` changes one)."""
    if isinstance(households, _Index):
        return households
    return _Index(households, ("household_id", "personal_id"), HouseholdMember, HouseholdMemberPage)


def make_civil_status_app(events: Sequence[dict[str, Any]], username: str, password: str,
                          households: Sequence[dict[str, Any]] | _Index = ()) -> WsgiApp:
    """Build the WS-Security protected SOAP WSGI application serving ``events`` and ``households``.

    Args:
        events: Ground-truth rows from
            :func:`sandbox.civil_status.make_civil_status_events_with_defects`.
        households: Ground-truth rows from :func:`sandbox.households.make_household_members_with_defects`, or
            their :func:`household_register`.
        username: The UsernameToken user the service accepts.
        password: Its password (text or digest).

    Returns:
        A WSGI callable; its WSDL is at ``GET /?wsdl``.
    """
    app = Application(
        [CivilStatusService],
        tns=NAMESPACE,
        name="CivilStatusService",
        in_protocol=Soap11(validator="lxml"),
        out_protocol=Soap11(),
    )
    app.sandbox_index = _EventIndex(events)  # type: ignore[attr-defined]
    app.sandbox_households = household_register(households)  # type: ignore[attr-defined]
    quiet_client_faults(_CLIENT_FAULTS)
    return require_username_token(WsgiApplication(app), username, password)
