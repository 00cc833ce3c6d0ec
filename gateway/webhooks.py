"""Change notifications (webhooks): an agency's endpoint is told when a shared dataset it follows changed.

An agency that keeps its own copy of a dataset by the change feed (gateway.changes,
`lgsp mirror`) has to poll it. With a webhook it is told instead, minutes after the load
(the `lgsp_notify` DAG runs on every shared dataset's Asset), and then reads the feed.
A notification carries no record, only which dataset changed and how much, so nothing
personal leaves by it and the agency's grant still decides what it reads:

    POST https://so-xay-dung.example/lgsp-hook
    content-type: application/json
    webhook-id: wh_1a2b3c4d5e6f_42
    webhook-timestamp: 1764925200
    webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=

    {"type":"dataset.changed","timestamp":"2026-12-05T09:00:00+00:00","data":{"dataset":"enterprise",
     "first_change":40,"last_change":42,"changes":3,"rows_changed":41,
     "last_committed_at":"2026-12-05T08:59:12+00:00","feed":"https://lgsp.example/api/v1/datasets/enterprise/changes"}}

Signed as Standard Webhooks (https://www.standardwebhooks.com) sign: `v1,` and the base64
HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` under the endpoint's secret
(`whsec_...`, printed once when the webhook is added; any Standard Webhooks library
verifies it). The secret is derived from the gateway's key (`LGSP_GATEWAY_PSEUDONYM_KEY`)
and a nonce, so no secret is stored; after `rotate` the old secret signs too for 24 hours.

Delivery follows the change log (`lgsp_change`), not a queue of its own: a webhook
remembers the last change number its endpoint acknowledged (`delivered_seq`, set to the
newest when the webhook is added), and each dispatch sends one notification for every
change of the dataset since (a backlog of 50 loads is one POST). A 2xx answer moves it on;
anything else (no answer within the timeouts, or not all of it within 30 s; 5xx, 4xx, a
redirect: not followed) is tried again after 30 s, 1, 2, 4... minutes (at most an hour
apart); after 10 failures in a row, or a 410 Gone, the webhook is dead until `lgsp webhooks
retry`. A retry of the same changes keeps the same `webhook-id`: delivery is at least once,
deduplicate on it.
A webhook whose agency lost its grant (or was disabled) is paused, not sent. For a grant on some rows
only (`--scope`), `rows_changed` counts those rows, `reconcile` says whether a record may have left
them, and a change that touched none of them (and moved none out) is not told at all.
Two dispatchers never send the same webhook at once: each claims it first (a lease that
a crashed dispatcher's claim runs out of).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa
import urllib3

from catalog.models import Catalog
from gateway import events as agency_events
from gateway import tables
from gateway.agencies import Grant, grant_of, live_grant
from gateway.changes import Window, changed_within, feed_problem, left_scope, rows_within
from warehouse.shared import shared_views
from warehouse.store import utc

log = logging.getLogger("lgsp.gateway.webhooks")
EVENT = "dataset.changed"
PING = "webhook.ping"  # `lgsp webhooks ping`: an endpoint checks it can verify what it gets
MAX_ATTEMPTS = 10  # failures in a row before a webhook is dead
FIRST_RETRY_S = 30.0
LONGEST_RETRY_S = 3600.0
TIMEOUT_S = (5.0, 10.0)  # to connect, then between bytes of the answer
DEADLINE_S = 30.0  # for the whole exchange: an endpoint trickling its answer a byte at a time is cut off
LEASE_S = 60.0  # a claim outlives one send (DEADLINE_S) with room to record it
ROTATION_GRACE = timedelta(hours=24)
ANSWER_BYTES = 2048  # of an endpoint's answer, kept to say why it refused
SENDERS = 8  # endpoints sent to at once: a slow one does not hold the others up
AGENCY_LIMIT = 20  # webhooks an agency may hold that it registered itself (the gateway's API)
EVENTS_PER_TURN = 50  # an access webhook's events sent in one dispatch (one message each)
CHANGES = sa.table("lgsp_change", sa.column("change_seq"), sa.column("dataset"), sa.column("rows_changed"),
                   sa.column("committed_at", sa.DateTime(timezone=True)))


class WebhookError(ValueError):
    """A webhook cannot be added or changed; the message says why and what to do."""


class UnknownWebhook(LookupError):
    """No such webhook of the asking agency (the gateway's 404)."""


@dataclass(frozen=True)
class Delivery:
    """One webhook's turn in a dispatch: delivered, failed (tried again at `next_attempt_at`), dead, gone or
    paused (its agency may no longer read the dataset: nothing sent)."""

    webhook_id: str
    agency_id: str
    dataset: str
    url: str  # as shown: no user, password or query
    outcome: str
    first_change: int
    last_change: int
    status: int | None = None
    error: str | None = None
    duration_ms: int = 0
    next_attempt_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> datetime:
    return datetime.now(timezone.utc)



def signing_secret(key: bytes, webhook_id: str, nonce: str) -> str:
    """The endpoint's secret, `whsec_` + base64 of 32 bytes, derived from the gateway's key (never stored)."""
    derived = hmac.new(key, f"lgsp webhook secret\0{webhook_id}\0{nonce}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(derived).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks' signature of one message: `v1,` + base64(HMAC-SHA256(secret, id.timestamp.body))."""
    raw = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(raw, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def shown_url(url: str) -> str:
    """`scheme://host[:port]/path`: an endpoint's address without user, password or query (they may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" + ("?..." if parts.query else "")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_http: bool = False) -> None:
    """An endpoint's address is http(s) with a host; plain http only on loopback or with `allow_http`."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError as exc:
        raise WebhookError(f"webhook URL {url!r} cannot be parsed ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"webhook URL {shown_url(url)!r} must be an http(s) address, "
                           "e.g. https://agency.example/lgsp-hook")
    if parts.scheme == "http" and not allow_http and not _loopback(parts.hostname):
        raise WebhookError(f"webhook URL {shown_url(url)!r} must use https: the notification is signed, not "
                           "encrypted (--allow-http for an endpoint on the province's own network)")


def host_allowed(url: str, patterns: tuple[str, ...]) -> bool:
    """Whether `url`'s host is one an agency may register itself: `host` exactly, or `*.domain` for the hosts
    under domain (not domain itself)."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return any(host.endswith(p[1:]) and host != p[2:] if p.startswith("*.") else host == p for p in patterns)


def retry_delay(attempts: int) -> timedelta:
    """How long after its `attempts`-th failure in a row a webhook is tried again: 30 s, 1, 2, 4 min ... 1 h."""
    return timedelta(seconds=min(FIRST_RETRY_S * 2 ** (attempts - 1), LONGEST_RETRY_S))


class Webhooks:
    """Agencies' webhooks on the warehouse database: add, list, rotate, retry, remove, and dispatch."""

    def __init__(self, engine: sa.Engine, catalog: Catalog, key: bytes, public_url: str | None = None,
                 max_attempts: int = MAX_ATTEMPTS, timeout_s: tuple[float, float] = TIMEOUT_S,
                 deadline_s: float = DEADLINE_S) -> None:
        self.engine = engine
        self.catalog = catalog
        self.key = key
        self.public_url = (public_url or "").rstrip("/")
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self._views: dict[str, sa.Table] | None = None  # the shared views, for grants on some rows

    # --- registration -------------------------------------------------------------------------------

    def add(self, agency_id: str, dataset: str, url: str, allow_http: bool = False,
            created_by: str = "province", events: str = EVENT) -> tuple[str, str]:
        """Tell `agency_id`'s endpoint at `url` when `dataset` changes from now on: (webhook id, secret).
        `events` "access" (`gateway.events.ACCESS`): of the agency's own events instead (requests decided,
        grants made, changed, revoked, ending or ended), with `dataset` "*".

        The secret is returned once (the endpoint verifies signatures with it); it is not stored.
        `created_by` "agency" (the gateway's API): at most `AGENCY_LIMIT` of them per agency.
        """
        if events not in (EVENT, agency_events.ACCESS):
            raise WebhookError(f"a webhook tells of '{EVENT}' (a dataset's changes) or '{agency_events.ACCESS}' (its "
                               f"agency's requests and grants), not '{events}'")
        access = events == agency_events.ACCESS
        if access:
            dataset = "*"
        elif dataset not in self.catalog.sharing:
            raise WebhookError(f"'{dataset}' is not shared (catalog/sharing.yaml has: "
                               f"{', '.join(sorted(self.catalog.sharing))})")
        problem = None if access else feed_problem(self.catalog, dataset)
        if problem:
            raise WebhookError(f"{problem}; a webhook tells of the changes its feed delivers")
        check_url(url, allow_http)
        w = tables.webhook
        with self.engine.begin() as conn:
            if conn.execute(sa.select(tables.agency.c.agency_id)
                            .where(tables.agency.c.agency_id == agency_id)).first() is None:
                raise WebhookError(f"no agency '{agency_id}': register it first (lgsp agencies add {agency_id} NAME)")
            if not access and conn.execute(sa.select(tables.grant.c.dataset).where(
                    tables.grant.c.agency_id == agency_id, tables.grant.c.dataset == dataset,
                    live_grant())).first() is None:
                raise WebhookError(f"agency '{agency_id}' has no grant on '{dataset}': it could not read what it is "
                                   f"told of (lgsp agencies grant {agency_id} {dataset})")
            same = conn.execute(sa.select(w.c.webhook_id).where(
                w.c.agency_id == agency_id, w.c.dataset == dataset, w.c.url == url, w.c.removed_at.is_(None))).scalar()
            if same:
                told = "its access events" if access else f"'{dataset}'"
                raise WebhookError(f"agency '{agency_id}' already has webhook {same} for {told} at "
                                   f"{shown_url(url)} (lgsp webhooks rotate {same} for a new secret)")
            if created_by == "agency" and conn.execute(sa.select(sa.func.count()).select_from(w).where(
                    w.c.agency_id == agency_id, w.c.created_by == "agency", w.c.removed_at.is_(None))).scalar() \
                    >= AGENCY_LIMIT:
                raise WebhookError(f"agency '{agency_id}' already has {AGENCY_LIMIT} webhooks it registered: "
                                   "remove one first (DELETE /api/v1/webhooks/{id})")
            newest = agency_events.newest(conn, agency_id) if access else conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(CHANGES.c.change_seq), 0))
                .where(CHANGES.c.dataset == dataset)).scalar()
            webhook_id, nonce = f"wh_{secrets.token_hex(6)}", secrets.token_hex(16)
            conn.execute(w.insert().values(webhook_id=webhook_id, agency_id=agency_id, dataset=dataset, url=url,
                                           nonce=nonce, created_at=_now(), created_by=created_by, events=events,
                                           delivered_seq=int(newest or 0)))
        return webhook_id, signing_secret(self.key, webhook_id, nonce)

    def _live(self, conn: sa.Connection, webhook_id: str) -> Any:
        w = tables.webhook
        row = conn.execute(sa.select(w).where(w.c.webhook_id == webhook_id, w.c.removed_at.is_(None))).first()
        if row is None:
            raise WebhookError(f"no webhook '{webhook_id}' (see lgsp webhooks list)")
        return row

    def rotate(self, webhook_id: str) -> str:
        """A new secret (returned once); the old one signs too for `ROTATION_GRACE`, while the endpoint switches."""
        w = tables.webhook
        nonce = secrets.token_hex(16)
        with self.engine.begin() as conn:
            row = self._live(conn, webhook_id)
            conn.execute(w.update().where(w.c.webhook_id == webhook_id).values(
                nonce=nonce, previous_nonce=row.nonce, previous_until=_now() + ROTATION_GRACE))
        return signing_secret(self.key, webhook_id, nonce)

    def remove(self, webhook_id: str) -> None:
        """Stop telling the endpoint (the webhook and its deliveries are kept, marked removed)."""
        with self.engine.begin() as conn:
            self._live(conn, webhook_id)
            conn.execute(tables.webhook.update().where(tables.webhook.c.webhook_id == webhook_id)
                         .values(removed_at=_now()))

    def retry(self, webhook_id: str | None = None) -> list[str]:
        """Give a dead webhook (or every dead one) a fresh run of attempts, due now: the ids revived."""
        w = tables.webhook
        where = [w.c.dead_at.is_not(None), w.c.removed_at.is_(None)]
        with self.engine.begin() as conn:
            if webhook_id is not None:
                self._live(conn, webhook_id)
                where.append(w.c.webhook_id == webhook_id)
            revived = list(conn.execute(sa.select(w.c.webhook_id).where(*where)).scalars())
            if revived:
                conn.execute(w.update().where(w.c.webhook_id.in_(revived)).values(
                    dead_at=None, attempts=0, next_attempt_at=None))
        return revived

    def listing(self, agency_id: str | None = None) -> list[dict[str, Any]]:
        """Every webhook not removed (or an agency's), with its state and the changes not yet told (no secret,
        the address without its query)."""
        w = tables.webhook
        query = sa.select(w).where(w.c.removed_at.is_(None)).order_by(w.c.agency_id, w.c.dataset, w.c.webhook_id)
        if agency_id is not None:
            query = query.where(w.c.agency_id == agency_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query)
            out = []
            e = tables.agency_event.c
            for row in rows.mappings().all():
                pending = conn.execute(
                    sa.select(sa.func.count()).select_from(tables.agency_event).where(
                        e.agency_id == row["agency_id"], e.event_seq > row["delivered_seq"])
                    if row["events"] == agency_events.ACCESS else
                    sa.select(sa.func.count()).select_from(CHANGES).where(
                        CHANGES.c.dataset == row["dataset"], CHANGES.c.change_seq > row["delivered_seq"])).scalar()
                state = "dead" if row["dead_at"] else ("failing" if row["attempts"] else "ok")
                out.append({"webhook_id": row["webhook_id"], "agency_id": row["agency_id"],
                            "dataset": row["dataset"], "events": row["events"], "url": shown_url(row["url"]),
                            "state": state, "created_by": row["created_by"],
                            "delivered_change": row["delivered_seq"], "pending_changes": int(pending or 0),
                            "delivered_at": utc(row["delivered_at"]), "attempts": row["attempts"],
                            "next_attempt_at": utc(row["next_attempt_at"]), "last_status": row["last_status"],
                            "last_error": row["last_error"]})
        return out

    def deliveries(self, webhook_id: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The latest attempts, newest first."""
        d = tables.webhook_delivery
        query = sa.select(d).order_by(d.c.delivery_id.desc()).limit(limit)
        if webhook_id is not None:
            query = query.where(d.c.webhook_id == webhook_id)
        with self.engine.connect() as conn:
            return [{**{str(k): v for k, v in row.items()}, "attempted_at": utc(row["attempted_at"])}
                    for row in conn.execute(query).mappings()]  # plain str keys (JSON encoders refuse subclasses)

    # --- dispatch ---------------------------------------------------------------------------------------

    def dispatch(self) -> list[Delivery]:
        """Send every due webhook the changes its endpoint has not acknowledged (one notification each)."""
        w, e = tables.webhook, tables.agency_event.c
        now = _now()
        newest = sa.case(  # along the change log's (dataset, change_seq) index, or the events' (agency, event_seq)
            (w.c.events == agency_events.ACCESS,
             sa.select(sa.func.max(e.event_seq)).where(e.agency_id == w.c.agency_id).scalar_subquery()),
            else_=sa.select(sa.func.max(CHANGES.c.change_seq)).where(CHANGES.c.dataset == w.c.dataset)
            .scalar_subquery())
        with self.engine.connect() as conn:  # one query when nothing is due: what most runs of lgsp_notify find
            due = list(conn.execute(sa.select(w.c.webhook_id).where(
                w.c.removed_at.is_(None), w.c.dead_at.is_(None), w.c.delivered_seq < newest,
                sa.or_(w.c.next_attempt_at.is_(None), w.c.next_attempt_at <= now))
                .order_by(w.c.webhook_id)).scalars())
        if not due:
            return []
        with ThreadPoolExecutor(max_workers=min(SENDERS, len(due)), thread_name_prefix="lgsp-webhook") as pool:
            done = list(pool.map(self._turn, due))
        return [delivery for delivery in done if delivery is not None]

    def _claim(self, webhook_id: str) -> Any:
        """The webhook's row if this dispatcher may send it now (no other holds it, it is due), else None."""
        w = tables.webhook
        now = _now()
        with self.engine.begin() as conn:
            claimed = conn.execute(w.update().where(
                w.c.webhook_id == webhook_id, w.c.removed_at.is_(None), w.c.dead_at.is_(None),
                sa.or_(w.c.next_attempt_at.is_(None), w.c.next_attempt_at <= now),
                sa.or_(w.c.claimed_until.is_(None), w.c.claimed_until < now))
                .values(claimed_until=now + timedelta(seconds=LEASE_S))).rowcount
            return conn.execute(sa.select(w).where(w.c.webhook_id == webhook_id)).first() if claimed else None

    def _release(self, webhook_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(tables.webhook.update().where(tables.webhook.c.webhook_id == webhook_id)
                         .values(claimed_until=None, **values))

    def _grant(self, conn: sa.Connection, agency_id: str, dataset: str) -> Grant | None:
        """The agency's live grant on the dataset (None: it may not read it: no grant, an expired one, disabled)."""
        a, g = tables.agency.c, tables.grant.c
        row = conn.execute(sa.select(g.personal_columns, g.row_scope).select_from(tables.grant.join(tables.agency))
                           .where(g.agency_id == agency_id, g.dataset == dataset, a.disabled_at.is_(None),
                                  live_grant())).first()
        return None if row is None else grant_of(row.personal_columns, row.row_scope)

    def _scoped(self, conn: sa.Connection, hook: Any, grant: Grant, last: int) -> tuple[int, bool | None, int]:
        """For a grant on some rows only, of the changes after the hook's `delivered_seq` up to `last`: (the rows
        they changed within the scope, whether a record may have left it (the bit the change feed's `reconcile`
        tells; None: nothing to tell at all), the rows within the scope now).

        A merge table keeps no earlier value, so a row written beyond the scope may have been within it before.
        With no row written within it, the rows it covers are as many as when the endpoint last acknowledged only
        if none left it (an entering row is written within it): then nothing is told."""
        if self._views is None:
            self._views = shared_views(self.catalog)
        view, window = self._views[hook.dataset], Window(hook.delivered_seq, last, "upserts")
        within = changed_within(conn, view, hook.dataset, grant.scope, window)
        held = rows_within(conn, view, grant.scope)
        if within == 0 and hook.scope_rows is not None and held == hook.scope_rows:
            return 0, None, held
        return within, left_scope(conn, view, hook.dataset, grant.scope, window), held

    def _turn(self, webhook_id: str) -> Delivery | None:
        try:
            return self._send(webhook_id)
        except Exception:  # noqa: BLE001 - one webhook's fault (its database rows) must not stop the others
            log.exception("webhook %s: dispatch failed; its claim runs out in %.0f s", webhook_id, LEASE_S)
            return None

    def _send(self, webhook_id: str) -> Delivery | None:
        hook = self._claim(webhook_id)
        if hook is None:
            return None
        if hook.events == agency_events.ACCESS:
            return self._send_events(hook)
        with self.engine.connect() as conn:
            pending = conn.execute(sa.select(
                sa.func.count(), sa.func.coalesce(sa.func.sum(CHANGES.c.rows_changed), 0),
                sa.func.min(CHANGES.c.change_seq), sa.func.max(CHANGES.c.change_seq),
                sa.func.max(CHANGES.c.committed_at)).where(
                CHANGES.c.dataset == hook.dataset, CHANGES.c.change_seq > hook.delivered_seq)).one()
            grant = self._grant(conn, hook.agency_id, hook.dataset)
            changes, rows_changed, first, last, committed_at = pending
            scoped = changes and grant is not None and grant.scope and hook.dataset in self.catalog.sharing
            left, held = None, None
            if scoped:
                rows_changed, left, held = self._scoped(conn, hook, grant, last)
        if not changes:
            self._release(webhook_id)
            return None
        if scoped and left is None:  # none of its rows changed and none left them: nothing to tell
            self._release(webhook_id, delivered_seq=last, scope_rows=held)
            return None
        shown = shown_url(hook.url)
        if grant is None or hook.dataset not in self.catalog.sharing:
            why = ("is no longer shared (catalog/sharing.yaml)" if hook.dataset not in self.catalog.sharing else
                   f"may not be read by agency '{hook.agency_id}' (no grant, an expired one, or the agency is "
                   "disabled)")
            reason = (f"paused: '{hook.dataset}' {why}; nothing sent (lgsp agencies grant {hook.agency_id} "
                      f"{hook.dataset}, or lgsp webhooks remove {webhook_id})")
            self._release(webhook_id, last_error=reason)
            return Delivery(webhook_id, hook.agency_id, hook.dataset, shown, "paused", first, last, error=reason)
        message_id = f"{webhook_id}_{last}"
        body = self._body(hook.dataset, first, last, changes, rows_changed, committed_at, left, held)
        status, error, duration_ms = self._post(hook, message_id, body)
        outcome, values, error = self._outcome(webhook_id, hook.attempts, status, error, last)
        if outcome == "delivered":
            values["scope_rows"] = held
        self._record(hook, message_id, first, last, status, error, duration_ms, outcome, values)
        return Delivery(webhook_id, hook.agency_id, hook.dataset, shown, outcome, first, last, status, error,
                        duration_ms, values.get("next_attempt_at"))

    def _outcome(self, webhook_id: str, failures: int, status: int | None, error: str | None,
                 last: int) -> tuple[str, dict[str, Any], str | None]:
        """What an answer makes of a webhook that had failed `failures` times in a row: (outcome, its row's new
        values, the error as recorded)."""
        now = _now()
        if status is not None and 200 <= status < 300:
            return "delivered", {"delivered_seq": last, "delivered_at": now, "attempts": 0, "next_attempt_at": None,
                                 "last_error": None}, None
        if status == 410:
            error = f"the endpoint answered 410 Gone: the webhook is dead (lgsp webhooks retry {webhook_id})"
            return "gone", {"dead_at": now, "last_error": error}, error
        attempts = failures + 1
        if attempts >= self.max_attempts:
            error = f"{error}; dead after {attempts} failures in a row (lgsp webhooks retry {webhook_id})"
            return "dead", {"attempts": attempts, "dead_at": now, "last_error": error}, error
        return "failed", {"attempts": attempts, "next_attempt_at": now + retry_delay(attempts), "last_error": error}, \
            error

    def _record(self, hook: Any, message_id: str, first: int, last: int, status: int | None, error: str | None,
                duration_ms: int, outcome: str, values: dict[str, Any], release: bool = True) -> None:
        """The attempt and what it made of the webhook, in one transaction; the claim released (or, with more to
        send in this turn, renewed)."""
        claim = None if release else _now() + timedelta(seconds=LEASE_S)
        with self.engine.begin() as conn:
            conn.execute(tables.webhook.update().where(tables.webhook.c.webhook_id == hook.webhook_id)
                         .values(claimed_until=claim, last_status=status, **values))
            conn.execute(tables.webhook_delivery.insert().values(
                webhook_id=hook.webhook_id, message_id=message_id, first_change=first, last_change=last,
                attempted_at=_now(), outcome=outcome, status=status, error=error, duration_ms=duration_ms))
        told = hook.dataset if hook.events != agency_events.ACCESS else f"{hook.agency_id}'s access events"
        if outcome == "delivered":
            log.info("webhook %s: %s %d-%d delivered to %s (%d ms)", hook.webhook_id, told, first, last,
                     shown_url(hook.url), duration_ms)
        else:
            log.warning("webhook %s: %s %d-%d to %s: %s", hook.webhook_id, told, first, last, shown_url(hook.url),
                        error)

    def _send_events(self, hook: Any) -> Delivery | None:
        """An access webhook's turn: the agency's events since the last acknowledged, one message each, in order,
        until one fails (at most `EVENTS_PER_TURN`; the rest at the next dispatch)."""
        with self.engine.connect() as conn:
            disabled = conn.execute(sa.select(tables.agency.c.disabled_at)
                                    .where(tables.agency.c.agency_id == hook.agency_id)).scalar()
        pending = agency_events.after(self.engine, hook.agency_id, hook.delivered_seq, EVENTS_PER_TURN,
                                      self.public_url)
        if not pending:
            self._release(hook.webhook_id)
            return None
        first, shown = pending[0]["data"]["event"], shown_url(hook.url)
        if disabled is not None:
            reason = (f"paused: agency '{hook.agency_id}' is disabled; nothing sent (lgsp agencies enable "
                      f"{hook.agency_id}, or lgsp webhooks remove {hook.webhook_id})")
            self._release(hook.webhook_id, last_error=reason)
            return Delivery(hook.webhook_id, hook.agency_id, hook.dataset, shown, "paused", first,
                            pending[-1]["data"]["event"], error=reason)
        took, failures = 0, hook.attempts
        for n, event in enumerate(pending):
            seq = event["data"]["event"]
            message_id = f"{hook.webhook_id}_e{seq}"
            body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
            status, error, duration_ms = self._post(hook, message_id, body)
            took += duration_ms
            outcome, values, error = self._outcome(hook.webhook_id, failures, status, error, seq)
            more = outcome == "delivered" and n + 1 < len(pending)
            self._record(hook, message_id, seq, seq, status, error, duration_ms, outcome, values, release=not more)
            if not more:
                return Delivery(hook.webhook_id, hook.agency_id, hook.dataset, shown, outcome, first, seq, status,
                                error, took, values.get("next_attempt_at"))
            failures = 0
        return None  # not reached: the last event ends the loop

    def _body(self, dataset: str, first: int, last: int, changes: int, rows_changed: int,
              committed_at: datetime | None, left: bool | None = None, held: int | None = None) -> bytes:
        """The notification; for a grant on some rows, `rows_changed` counts those rows only, `reconcile` says a
        record may have left them and `scope_rows` how many rows the grant covers now (as the feed's last page)."""
        stamp = utc(committed_at)
        data = {"dataset": dataset, "first_change": int(first), "last_change": int(last), "changes": int(changes),
                "rows_changed": int(rows_changed), "last_committed_at": stamp.isoformat() if stamp else None,
                "feed": self._feed(dataset)}
        if left is not None:
            data["reconcile"], data["scope_rows"] = left, held
        return self._event(EVENT, data)

    def _feed(self, dataset: str) -> str:
        return f"{self.public_url}/api/v1/datasets/{dataset}/changes"

    @staticmethod
    def _event(kind: str, data: dict[str, Any]) -> bytes:
        event = {"type": kind, "timestamp": _now().isoformat(timespec="seconds"), "data": data}
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()

    def ping(self, webhook_id: str) -> Delivery:
        """Send a `webhook.ping` event now, to check an endpoint and its secret (at setup, after a rotation);
        recorded among the deliveries, the webhook's state unchanged."""
        with self.engine.connect() as conn:
            hook = self._live(conn, webhook_id)
        message_id = f"{webhook_id}_ping_{secrets.token_hex(4)}"
        body = self._event(PING, {"webhook": webhook_id, "events": hook.events, "dataset": hook.dataset,
                                  "feed": f"{self.public_url}/api/v1/events" if hook.events == agency_events.ACCESS
                                  else self._feed(hook.dataset)})
        status, error, duration_ms = self._post(hook, message_id, body)
        outcome = "delivered" if error is None else "failed"
        with self.engine.begin() as conn:
            conn.execute(tables.webhook_delivery.insert().values(
                webhook_id=webhook_id, message_id=message_id, first_change=hook.delivered_seq,
                last_change=hook.delivered_seq, attempted_at=_now(), outcome=outcome, status=status, error=error,
                duration_ms=duration_ms))
        return Delivery(webhook_id, hook.agency_id, hook.dataset, shown_url(hook.url), outcome, hook.delivered_seq,
                        hook.delivered_seq, status, error, duration_ms)

    def _signatures(self, hook: Any, message_id: str, timestamp: int, body: bytes) -> str:
        nonces = [hook.nonce]
        previous_until = utc(hook.previous_until)
        if hook.previous_nonce and previous_until is not None and previous_until > _now():
            nonces.append(hook.previous_nonce)
        return " ".join(sign(signing_secret(self.key, hook.webhook_id, nonce), message_id, timestamp, body)
                        for nonce in nonces)

    def _post(self, hook: Any, message_id: str, body: bytes) -> tuple[int | None, str | None, int]:
        """POST one notification within `deadline_s`: (the endpoint's status or None, what went wrong or None,
        how long it took in ms).

        The timeouts bound each wait for a byte, not the whole answer; an endpoint that trickles its
        status line, headers or body would hold the sender (and outlive its claim). So the exchange
        runs in a thread of its own, left behind at the deadline (a daemon: it ends when the peer does).
        """
        outcome: list[tuple[int | None, str | None]] = []
        exchange = threading.Thread(target=lambda: outcome.append(self._exchange(hook, message_id, body)),
                                    daemon=True, name="lgsp-webhook-post")
        started = time.perf_counter()
        exchange.start()
        exchange.join(self.deadline_s)
        took = round((time.perf_counter() - started) * 1000)
        if not outcome:
            return None, (f"{shown_url(hook.url)} did not finish answering within {self.deadline_s:g} s "
                          "(each byte came, but too slowly); the exchange was abandoned"), took
        return (*outcome[0], took)

    def _exchange(self, hook: Any, message_id: str, body: bytes) -> tuple[int | None, str | None]:
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "user-agent": "lgsp-webhooks/1",
                   "webhook-id": message_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": self._signatures(hook, message_id, timestamp, body)}
        shown = shown_url(hook.url)
        try:
            with requests.post(hook.url, data=body, headers=headers, timeout=self.timeout_s,
                               allow_redirects=False, stream=True) as answer:
                status = answer.status_code
                if 200 <= status < 300:
                    return status, None
                try:
                    text = answer.raw.read(ANSWER_BYTES, decode_content=True).decode("utf-8", "replace").strip()
                except (urllib3.exceptions.HTTPError, OSError) as exc:  # the status came; its body stalled or broke
                    text = f"(its body could not be read: {type(exc).__name__})"
                if 300 <= status < 400:
                    where = shown_url(answer.headers.get("location", "")) if answer.headers.get("location") else "?"
                    return status, (f"{shown} answered {status}, a redirect to {where} (not followed): "
                                    "register the final address")
                return status, f"{shown} answered {status}: {' '.join(text.split())[:300] or '(no body)'}"
        except requests.Timeout:
            return None, (f"{shown} did not answer within {self.timeout_s[0]:g} s to connect / "
                          f"{self.timeout_s[1]:g} s to answer")
        except requests.ConnectionError as exc:
            return None, f"could not reach {shown}: {_reason(exc)}"
        except requests.RequestException as exc:
            return None, f"{shown}: {type(exc).__name__}: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    """The innermost reason of a requests error, without the URL (its query may hold a secret)."""
    inner: BaseException = exc
    while True:
        nested = getattr(inner, "reason", None) or inner.__cause__ or inner.__context__
        if not isinstance(nested, BaseException) or nested is inner:
            break
        inner = nested
    text = str(inner)
    if text.startswith("<") and ">: " in text:  # urllib3's "<...HTTPConnection object at 0x..>: Failed to ..."
        text = text.split(">: ", 1)[1]
    return " ".join(text.split())[:300] or type(inner).__name__


def from_environment(catalog: Catalog | None = None) -> Webhooks:
    """The webhooks on the warehouse database, keyed by the gateway's settings (LGSP_GATEWAY_PSEUDONYM_KEY,
    LGSP_GATEWAY_PUBLIC_URL); the warehouse's and the gateway's tables are made if missing (a webhook may be
    added before the first load)."""
    from catalog import load_catalog
    from gateway.service import _write_engine
    from gateway.settings import load_gateway_settings
    from warehouse import Warehouse

    settings = load_gateway_settings()
    catalog = catalog or load_catalog()
    warehouse = Warehouse(settings.database_url, catalog)
    warehouse.create_all(check_shapes=False)  # reads the change log only: a table awaiting a migration is no matter
    warehouse.engine.dispose()
    engine = _write_engine(settings.database_url)
    tables.create_gateway_tables(engine)
    return Webhooks(engine, catalog, settings.pseudonym_key, settings.public_url)


def scheduled_dispatch() -> dict[str, Any]:
    """The `lgsp_notify` DAG's task: the grants ending soon or just ended told of (`gateway.events.
    note_ending_grants`), and the datasets whose columns changed (`note_schema_changes`), then one dispatch; a
    summary by outcome, the deliveries, and the grants and schemas told of.

    A warehouse with no webhook needs nothing, not even the gateway's key: the DAG runs every 5
    minutes on installations that do not serve the gateway. It creates no table (DDL on the
    gateway's tables would wait for the audit's writers), but for the webhook table's `events`
    column and the events' table on a database from before them (`tables.upgrade_for_events`)."""
    from catalog import load_catalog
    from gateway.service import _write_engine
    from gateway.settings import load_gateway_settings
    from lgsp.settings import load_settings

    summary: dict[str, Any] = {o: 0 for o in ("delivered", "failed", "dead", "gone", "paused")}
    engine = _write_engine(load_settings().database_url)
    try:
        inspector = sa.inspect(engine)
        if not inspector.has_table(tables.webhook.name):  # no gateway here: no grant, no webhook
            return {**summary, "deliveries": [], "grants_told": [], "schemas_told": []}
        if "events" not in {c["name"] for c in inspector.get_columns(tables.webhook.name)} or \
                not inspector.has_table(tables.dataset_schema.name):
            tables.upgrade_for_events(engine)  # the gateway not restarted since lgsp was upgraded
        ending = agency_events.note_ending_grants(engine)  # grants ending soon or ended: their agencies' events
        schemas = agency_events.note_schema_changes(engine, load_catalog())  # a catalog deployed: columns changed
        with engine.connect() as conn:
            live = conn.execute(sa.select(sa.func.count()).select_from(tables.webhook)
                                .where(tables.webhook.c.removed_at.is_(None))).scalar()
        if not live:
            return {**summary, "deliveries": [], "grants_told": ending, "schemas_told": schemas}
        settings = load_gateway_settings()  # signing needs the key: a clear error if it is missing
        done = Webhooks(engine, load_catalog(), settings.pseudonym_key, settings.public_url).dispatch()
    finally:
        engine.dispose()
    summary.update({o: sum(d.outcome == o for d in done) for o in summary})
    summary["deliveries"] = [{**d.as_dict(), "next_attempt_at": str(d.next_attempt_at or "")} for d in done]
    summary["grants_told"], summary["schemas_told"] = ending, schemas
    return summary
