"""Extensions from installed packages: row rules, paginators and auth methods, by entry points.

A province's own package adds what lgsp does not ship, without a fork of lgsp. Say the province
package `lgsp-ninh-binh` has a rule for vehicle plates and its document system's paging:

    # its pyproject.toml
    [project.entry-points."lgsp.rules"]
    vn_plate = "lgsp_ninh_binh.rules"          # a module whose import registers the rule
    [project.entry-points."lgsp.paginators"]
    skip_take = "lgsp_ninh_binh.paging"

    # lgsp_ninh_binh/rules.py
    from quality.rules import rule
    @rule("vn_plate", lambda row, column: f"{column} {row[column]!r} is not a Vietnamese plate")
    def vn_plate(df, column): ...               # a boolean Series, True where the row passes

Groups: `lgsp.rules` (quality.rules.rule), `lgsp.paginators` (connectors.paging.register),
`lgsp.auth` (connectors.auth.register). An entry point names a module (or an object in one); loading
it imports the module, whose decorators register what it defines under their own names, as lgsp's own
are. The entry point's name is its label in messages.

They are loaded once per process: the first time a name is not among lgsp's own (so a run that uses only
lgsp's never imports them), and by `lgsp catalog` and `lgsp doctor`, which list them. One that fails to
import is reported with its package and error, never skipped in silence.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points

log = logging.getLogger("lgsp.plugins")

GROUPS = ("lgsp.rules", "lgsp.paginators", "lgsp.auth")
_lock = threading.Lock()
_loaded: list[Plugin] | None = None


@dataclass(frozen=True)
class Plugin:
    """One entry point of an installed package: where it is and whether it loaded."""

    group: str
    name: str
    value: str  # module, or module:object
    package: str
    error: str | None = None

    def said(self) -> str:
        where = f"{self.group} {self.name} = {self.value} ({self.package})"
        return where if self.error is None else f"{where}: failed to load: {self.error}"


def load_plugins() -> list[Plugin]:
    """Import every installed package's lgsp entry points (once per process); what was found, and how it went."""
    global _loaded
    with _lock:
        if _loaded is None:
            found = []
            for group in GROUPS:
                for point in sorted(entry_points(group=group), key=lambda p: p.name):
                    package = point.dist.name if point.dist is not None else "?"
                    try:
                        point.load()
                        error = None
                    except Exception as exc:  # noqa: BLE001 - a broken extension is reported, not fatal to lgsp
                        error = f"{type(exc).__name__}: {exc}"
                        log.error("extension %s %s (%s) failed to load: %s", group, point.name, package, error)
                    found.append(Plugin(group, point.name, point.value, package, error))
            _loaded = found
        return _loaded


def reset() -> None:
    """Forget what was loaded (tests install extensions while a process runs)."""
    global _loaded
    with _lock:
        _loaded = None
