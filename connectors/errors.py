"""Every connector failure has a class: retriable (try again later) or fatal (stop now)."""
from __future__ import annotations

from typing import Any


class ConnectorError(RuntimeError):
    """A call to an external system failed.

    The message names the system, the operation, what happened and what to do. `code` is the
    peer's own word for a refusal, where it gave one: a SOAP fault code (`Client.NotFound`) or
    `HTTP 404`; a live lookup (gateway.lookup) tells "no such record" from other refusals by it.
    """

    retriable = False

    def __init__(self, system: str, operation: str, problem: str, hint: str = "", code: str = "") -> None:
        self.system, self.operation, self.problem, self.hint = system, operation, problem, hint
        self.code = code
        message = f"{system} {operation}: {problem}"
        if hint:
            message += f" -- {hint}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled whole (class, message and fields): the extract runs in a child process (lgsp.streaming)."""
        return (_rebuild, (type(self), str(self), self.__dict__.copy()))


def _rebuild(cls: type[ConnectorError], message: str, state: dict[str, Any]) -> ConnectorError:
    error = cls.__new__(cls)
    RuntimeError.__init__(error, message)
    error.__dict__.update(state)
    return error


class RetriableError(ConnectorError):
    """Timeouts, connection resets, 429, 5xx, SOAP server faults."""

    retriable = True

    def __init__(self, system: str, operation: str, problem: str, hint: str = "",
                 retry_after_s: float | None = None) -> None:
        super().__init__(system, operation, problem, hint)
        self.retry_after_s = retry_after_s


class FatalError(ConnectorError):
    """Other 4xx, SOAP client faults, malformed payloads: retrying will not help."""


class RetriesExhausted(ConnectorError):
    """A retriable failure kept happening until the retry budget ran out."""
