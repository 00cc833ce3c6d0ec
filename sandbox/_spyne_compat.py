"""Make spyne 2.14 importable on Python 3.12+ (and quiet on 3.11), and stop its per-request GC.

Import this module before anything from ``spyne``; importing it installs the
fixes (idempotent). Three problems are patched, nothing else is touched:

1. spyne bundles six 1.14 (``spyne.util.six``), whose meta-path importer only
   has the legacy ``find_module``/``load_module``. Python 3.11 falls back to
   them with an ``ImportWarning``; Python 3.12 removed the fallback, so
   ``import spyne`` fails with ``No module named 'spyne.util.six.moves'``.
   :class:`_SixMovesFinder` serves those names through the modern
   ``find_spec`` protocol by delegating to six's own importer (and gives that
   importer a declining ``find_spec`` so 3.11 stops warning).
2. ``spyne.server.wsgi`` and ``spyne.protocol.soap.soap11`` ``import cgi``
   (only for ``cgi.parse_header``); ``cgi`` was removed in Python 3.13. If it
   is missing, a minimal ``cgi`` module providing ``parse_header`` is
   registered.
3. spyne's ``MethodContext.close`` runs a full ``gc.collect()`` after a request
   whenever a second has passed since the last (``spyne.const.MIN_GC_INTERVAL``),
   "to have file descriptors returned in a timely manner" (attachments, which
   the sandbox does not use). A full collection holds the GIL for as long as
   the whole heap takes to walk: in the process that also runs lgsp (the test
   suite, the demo) that grew to seconds, so a 15-record page or the WSDL took
   longer than a client's timeout. The interval is set to infinity, as
   spyne's own tests do; CPython's reference counting still frees everything
   at once, and its generational collector still runs as usual.

Example:
    >>> import sandbox._spyne_compat  # noqa: F401
    >>> from spyne import Application  # works on 3.11, 3.12 and 3.13
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

_SIX = "spyne.util.six"
_MOVES = _SIX + ".moves"


class _SixMovesLoader(importlib.abc.Loader):
    """Loader delegating to six's legacy ``load_module``."""

    def __init__(self, importer: Any) -> None:
        self._importer = importer

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self._importer.load_module(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to do: six builds the module lazily in ``load_module``."""

    def is_package(self, fullname: str) -> bool:
        return bool(self._importer.is_package(fullname))


def _declining_find_spec(self: Any, fullname: str, path: Any = None, target: Any = None) -> None:
    """``find_spec`` added to six's importer: declines, :class:`_SixMovesFinder` serves."""
    return None


class _SixMovesFinder(importlib.abc.MetaPathFinder):
    """``find_spec`` front-end for ``spyne.util.six.moves.*``."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        importer = getattr(sys.modules.get(_SIX), "_importer", None)
        if importer is None:
            return None  # spyne's six not loaded yet
        native = getattr(type(importer), "find_spec", None)
        if native is None:
            # Stop Python 3.11 falling back to the legacy API (ImportWarning) for
            # every unrelated import; this finder serves six's names instead.
            type(importer).find_spec = _declining_find_spec  # type: ignore[attr-defined]
        elif native is not _declining_find_spec:
            return None  # a modern six that handles find_spec itself
        if fullname != _MOVES and not fullname.startswith(_MOVES + "."):
            return None
        if importer.find_module(fullname) is None:
            return None
        loader = _SixMovesLoader(importer)
        return importlib.util.spec_from_loader(fullname, loader, is_package=loader.is_package(fullname))


def _parse_header(line: str) -> tuple[str, dict[str, str]]:
    """``cgi.parse_header`` (stdlib <= 3.12), e.g. ``('text/xml', {'charset': 'utf-8'})``."""

    def _params(s: str) -> Any:
        while s[:1] == ";":
            s = s[1:]
            end = s.find(";")
            while end > 0 and (s.count('"', 0, end) - s.count('\\"', 0, end)) % 2:
                end = s.find(";", end + 1)
            if end < 0:
                end = len(s)
            yield s[:end].strip()
            s = s[end:]

    parts = _params(";" + line)
    key = next(parts)
    pdict: dict[str, str] = {}
    for p in parts:
        i = p.find("=")
        if i >= 0:
            name = p[:i].strip().lower()
            value = p[i + 1:].strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace("\\\\", "\\").replace('\\"', '"')
            pdict[name] = value
    return key, pdict


def install() -> None:
    """Install the three fixes (safe to call repeatedly)."""
    if not any(isinstance(f, _SixMovesFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SixMovesFinder())
    if "cgi" not in sys.modules and importlib.util.find_spec("cgi") is None:
        cgi = types.ModuleType("cgi", "Minimal stand-in for the removed stdlib cgi module (spyne needs parse_header).")
        cgi.parse_header = _parse_header  # type: ignore[attr-defined]
        sys.modules["cgi"] = cgi
    from spyne import const  # after the finder and cgi: spyne imports both

    const.MIN_GC_INTERVAL = float("inf")  # never a gc.collect() per request


install()
