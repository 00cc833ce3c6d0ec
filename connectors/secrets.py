"""Secrets come from the environment or Airflow Connections, never from files or code.

A secret is held as `Secret`, whose repr and str are redacted, so it cannot end
up in a log line or an exception message by accident.
"""
from __future__ import annotations

import os


class Secret:
    """A secret value that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class SecretNotFound(LookupError):
    """The reference names a secret that is not available."""


def resolve_secret(reference: str) -> Secret:
    """Resolve `env:VAR` or `conn:CONN_ID` (an Airflow Connection's password).

    Raises:
        SecretNotFound: naming the reference (never a value) and how to provide it.
    """
    kind, _, name = reference.partition(":")
    if kind == "env":
        value = os.environ.get(name)
        if value is None:
            raise SecretNotFound(f"secret {reference}: set the environment variable {name}")
        return Secret(value)
    if kind == "conn":
        try:
            from airflow.sdk import Connection  # heavy import, only when asked for

            value = Connection.get(name).password
        except Exception as exc:  # noqa: BLE001 - any lookup failure means "not there"
            raise SecretNotFound(
                f"secret {reference}: Airflow Connection '{name}' not found "
                f"(define AIRFLOW_CONN_{name.upper()} or add it in Airflow): {type(exc).__name__}"
            ) from None
        if not value:
            raise SecretNotFound(f"secret {reference}: Airflow Connection '{name}' has no password")
        return Secret(value)
    raise SecretNotFound(f"secret reference {reference!r} must start with env: or conn:")


def redact(text: str, secrets: list[Secret]) -> str:
    """Replace every secret value in `text` by ***."""
    for secret in secrets:
        if secret.reveal():
            text = text.replace(secret.reveal(), "***")
    return text
