"""Authentication methods, registered by name (the catalog's `auth.type`).

Each method is one small class: `configure` sets what is fixed for the
session (headers, client certificate, basic credentials), `prepare` adds what
changes per call (a bearer token, a session token in the JSON body),
`expired` recognises a refused token or session so the transport can
`refresh` and try once more, `wsse` gives zeep its WS-Security header.

Secrets are resolved from the environment or Airflow Connections when a
method is built, held as `Secret` (never printed) and listed in `secrets` so
transports and the message log can redact them.
"""
from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import requests

from catalog.loader import expand_env
from catalog.models import AuthSpec
from connectors.errors import FatalError, RetriableError
from connectors.secrets import Secret, resolve_secret

AUTH_METHODS: dict[str, type["AuthMethod"]] = {}


def register(name: str):  # type: ignore[no-untyped-def]
    def _add(cls: type[AuthMethod]) -> type[AuthMethod]:
        AUTH_METHODS[name] = cls
        return cls
    return _add


class AuthMethod:
    """No authentication; the base of every method."""

    def __init__(self, spec: AuthSpec, system: str, endpoint: str) -> None:
        self.spec, self.system, self.endpoint = spec, system, endpoint.rstrip("/")
        self.secrets: list[Secret] = []
        self.secret = self._resolve(spec.secret) if spec.secret else None

    def _resolve(self, reference: str) -> Secret:
        secret = resolve_secret(reference)
        self.secrets.append(secret)
        return secret

    def _url(self, path: str) -> str:
        path = expand_env(path)
        return path if "://" in path else self.endpoint + "/" + path.lstrip("/")

    def configure(self, session: requests.Session) -> None:
        """Set what is fixed for the whole session."""

    def prepare(self, session: requests.Session, request: dict[str, Any]) -> None:
        """Add per-call credentials to `request` (kwargs for `session.request`)."""

    def expired(self, response: requests.Response, body: Any) -> bool:
        """True if the peer refused the token or session (the transport refreshes and retries once)."""
        return False

    def refresh(self) -> None:
        """Forget the current token or session."""

    def wsse(self) -> Any:
        """A zeep WS-Security object, or None."""
        return None


register("none")(AuthMethod)


@register("api_key")
class ApiKeyAuth(AuthMethod):
    """A static key in a header, e.g. `X-API-Key: ...`."""

    def configure(self, session: requests.Session) -> None:
        assert self.secret is not None
        session.headers[self.spec.header or "X-API-Key"] = self.secret.reveal()


@register("bearer")
class BearerAuth(AuthMethod):
    """A static token: `Authorization: Bearer ...`."""

    def configure(self, session: requests.Session) -> None:
        assert self.secret is not None
        session.headers["Authorization"] = f"Bearer {self.secret.reveal()}"


@register("basic")
class BasicAuth(AuthMethod):
    """HTTP Basic with a user name and a password."""

    def configure(self, session: requests.Session) -> None:
        assert self.secret is not None
        session.auth = (expand_env(self.spec.username or ""), self.secret.reveal())


def _login_failure(system: str, what: str, response: requests.Response, hint: str) -> Exception:
    status = response.status_code
    if status == 429 or status >= 500:
        return RetriableError(system, what, f"HTTP {status}")
    return FatalError(system, what, f"HTTP {status}: refused", hint)


class _TokenCache:
    """A token and its expiry, refreshed `margin_s` early, safe across threads."""

    def __init__(self, margin_s: float = 30.0) -> None:
        self.value: str | None = None
        self.expires_at = 0.0
        self.margin_s = margin_s
        self.lock = threading.Lock()

    def valid(self) -> bool:
        return self.value is not None and time.monotonic() < self.expires_at

    def store(self, value: str, ttl_s: float) -> None:
        self.value = value
        self.expires_at = time.monotonic() + max(0.0, ttl_s - min(self.margin_s, ttl_s / 10))

    def clear(self) -> None:
        self.value, self.expires_at = None, 0.0


@register("oauth2_client_credentials")
class OAuth2ClientCredentials(AuthMethod):
    """OAuth 2.0 client credentials (RFC 6749 4.4): a cached bearer token, refreshed before it expires.

    Token endpoint answer: `{"access_token": "...", "token_type": "Bearer", "expires_in": 300}`
    """

    def __init__(self, spec: AuthSpec, system: str, endpoint: str) -> None:
        super().__init__(spec, system, endpoint)
        self.token = _TokenCache()

    def _fetch(self, session: requests.Session) -> None:
        assert self.secret is not None
        form = {"grant_type": "client_credentials", **({"scope": self.spec.scope} if self.spec.scope else {})}
        client = (expand_env(self.spec.client_id or ""), self.secret.reveal())
        try:
            response = session.post(self._url(self.spec.token_url or ""), data=form, auth=client, timeout=15)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise RetriableError(self.system, "oauth token", f"{type(exc).__name__}") from None
        if response.status_code != 200:
            raise _login_failure(self.system, "oauth token", response,
                                 "check the client id and the client secret (auth.client_id / auth.secret)")
        body = response.json()
        self.token.store(str(body["access_token"]), float(body.get("expires_in", 300)))

    def prepare(self, session: requests.Session, request: dict[str, Any]) -> None:
        with self.token.lock:
            if not self.token.valid():
                self._fetch(session)
            request.setdefault("headers", {})["Authorization"] = f"Bearer {self.token.value}"

    def expired(self, response: requests.Response, body: Any) -> bool:
        return response.status_code == 401

    def refresh(self) -> None:
        self.token.clear()


@register("session_login")
class SessionLogin(AuthMethod):
    """Log in with a user name and password for a session token, sent in each JSON body (DVCQG style).

    Login answer: `{"error_code": "0", "session": "..."}`; a call with an expired
    session answers `{"error_code": "-1", ...}`: log in again and retry.
    """

    EXPIRED_CODES: ClassVar[set[str]] = {"-1"}

    def __init__(self, spec: AuthSpec, system: str, endpoint: str) -> None:
        super().__init__(spec, system, endpoint)
        self.session_token = _TokenCache()

    def _login(self, session: requests.Session) -> None:
        assert self.secret is not None
        credentials = {"username": expand_env(self.spec.username or ""), "password": self.secret.reveal()}
        try:
            response = session.post(self._url(self.spec.login_path or ""), json=credentials, timeout=15)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise RetriableError(self.system, "login", f"{type(exc).__name__}") from None
        if response.status_code != 200:
            raise _login_failure(self.system, "login", response, "check the user name and password")
        body = response.json()
        token = body.get(self.spec.session_field)
        if not token:
            raise FatalError(self.system, "login", f"no '{self.spec.session_field}' in the login answer "
                             f"(error_code {body.get('error_code')!r})", "check the user name and password")
        self.session_token.store(str(token), 3600.0)

    def prepare(self, session: requests.Session, request: dict[str, Any]) -> None:
        with self.session_token.lock:
            if not self.session_token.valid():
                self._login(session)
            if "json" in request:
                request["json"] = {**request["json"], self.spec.session_field: self.session_token.value}

    def expired(self, response: requests.Response, body: Any) -> bool:
        return response.status_code == 401 or (
            isinstance(body, dict) and str(body.get("error_code")) in self.EXPIRED_CODES)

    def refresh(self) -> None:
        self.session_token.clear()


@register("wsse_username")
class WsseUsernameToken(AuthMethod):
    """WS-Security UsernameToken in the SOAP header (PasswordText, or PasswordDigest with `digest: true`)."""

    def wsse(self) -> Any:
        from zeep.wsse.username import UsernameToken

        assert self.secret is not None
        return UsernameToken(expand_env(self.spec.username or ""), self.secret.reveal(),
                             use_digest=self.spec.digest)


@register("mtls")
class MutualTls(AuthMethod):
    """Mutual TLS: the client certificate and key; `ca` verifies the peer."""

    def configure(self, session: requests.Session) -> None:
        session.cert = (expand_env(self.spec.cert or ""), expand_env(self.spec.key or ""))
        if self.spec.ca:
            session.verify = expand_env(self.spec.ca)


def make_auth(spec: AuthSpec, system: str, endpoint: str) -> AuthMethod:
    """The auth method named by `spec.type`, with its secrets resolved."""
    if spec.type not in AUTH_METHODS:  # perhaps an installed package's (lgsp.plugins)
        from lgsp.plugins import load_plugins

        load_plugins()
    try:
        cls = AUTH_METHODS[spec.type]
    except KeyError:
        raise ValueError(f"unknown auth type '{spec.type}' (known: {', '.join(sorted(AUTH_METHODS))}; an installed "
                         "package adds one by the entry point group lgsp.auth)") from None
    return cls(spec, system, endpoint)
