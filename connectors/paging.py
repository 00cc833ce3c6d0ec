"""Paging strategies, registered by name (the catalog's `paginator.type`).

A paginator turns the previous response into the parameters of the next
request, or None when there are no more pages.
"""
from __future__ import annotations

from typing import Any, ClassVar, Protocol


class Paginator(Protocol):
    def first(self) -> dict[str, Any]: ...

    def next(self, params: dict[str, Any], response: dict[str, Any], n_records: int) -> dict[str, Any] | None: ...


PAGINATORS: dict[str, type] = {}


def register(name: str):  # type: ignore[no-untyped-def]
    def _add(cls: type) -> type:
        PAGINATORS[name] = cls
        return cls
    return _add


@register("single")
class SinglePage:
    """The whole answer in one response."""

    def first(self) -> dict[str, Any]:
        return {}

    def next(self, params: dict[str, Any], response: dict[str, Any], n_records: int) -> None:
        return None


class ShortPages:
    """When a page shorter than asked is the last one, for an answer that carries no total.

    A source may cap its pages below the size asked (500 asked, 100 answered): taking its first
    page for the last would end the sync there, silently. So a short page ends the paging only
    when a larger page came before it (the source's cap is at least that large); a short page
    as large as any before may be the cap, and the next page is asked for (`probing`): an empty
    one, or the same records again (`iter_pages` checks), ends it. A whole answer in one short
    page thus costs one more request; dlt's paginators always ask until an empty page.
    """

    largest = 0  # the most records a page of this run held
    probing = False  # the page asked for follows a short page that may have been the source's cap

    def last_page(self, n_records: int, asked: int) -> bool:
        largest, self.largest = self.largest, max(self.largest, n_records)
        self.probing = 0 < n_records < asked and n_records >= largest
        return n_records == 0 or (n_records < asked and not self.probing)


@register("page_number")
class PageNumberPaginator(ShortPages):
    """`page=1,2,...` until `total_pages` is reached (or, without it, the last page: ShortPages).

    Example upstream payload: `{"items": [...], "page": 2, "total_pages": 7}`
    """

    defaults: ClassVar[dict[str, Any]] = {"page_param": "page", "size_param": "page_size",
                                          "page_size": 500, "total_pages_field": "total_pages",
                                          "first_page": 1}

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"page_number paginator: unknown parameter(s) {sorted(unknown)}")
        cfg = {**self.defaults, **params}
        self.page_param: str = cfg["page_param"]
        self.size_param: str = cfg["size_param"]
        self.page_size: int = int(cfg["page_size"])
        self.total_pages_field: str | None = cfg["total_pages_field"]
        self.first_page: int = int(cfg["first_page"])

    def first(self) -> dict[str, Any]:
        return {self.page_param: self.first_page, self.size_param: self.page_size}

    def next(self, params: dict[str, Any], response: dict[str, Any], n_records: int) -> dict[str, Any] | None:
        page = int(params[self.page_param])
        total = response.get(self.total_pages_field) if self.total_pages_field else None
        if total is not None and page >= int(total):
            return None
        if n_records == 0 or (total is None and self.last_page(n_records, self.page_size)):
            return None
        return {**params, self.page_param: page + 1}


def dig(response: dict[str, Any], path: str) -> Any:
    """`response["links"]["next"]` for path `links.next`; None if any step is missing."""
    value: Any = response
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class _Configured:
    """Paginator parameters: defaults, overridden by the catalog, unknown ones refused."""

    kind: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.kind} paginator: unknown parameter(s) {sorted(unknown)}")
        self.cfg = {**self.defaults, **params}


@register("offset")
class OffsetPaginator(_Configured, ShortPages):
    """`offset=0,500,1000,...` with `limit=500`, until `total` is reached (or, without it, the last page: ShortPages).

    Example upstream payload: `{"data": [...], "total": 1234, "offset": 500, "limit": 500}`
    """

    kind = "offset"
    defaults: ClassVar[dict[str, Any]] = {"offset_param": "offset", "limit_param": "limit", "limit": 500,
                                          "total_field": "total"}

    def first(self) -> dict[str, Any]:
        return {self.cfg["offset_param"]: 0, self.cfg["limit_param"]: int(self.cfg["limit"])}

    def next(self, params: dict[str, Any], response: dict[str, Any], n_records: int) -> dict[str, Any] | None:
        offset = int(params[self.cfg["offset_param"]]) + n_records
        total = dig(response, self.cfg["total_field"]) if self.cfg["total_field"] else None
        if n_records == 0 or (total is not None and offset >= int(total)):
            return None
        if total is None and self.last_page(n_records, int(self.cfg["limit"])):
            return None
        return {**params, self.cfg["offset_param"]: offset}


@register("cursor")
class CursorPaginator(_Configured):
    """An opaque next-page token from the response, sent back as a parameter; no token = last page.

    Serves `next_cursor`, Google-style `nextPageToken` and SOAP page tokens alike.
    A token the peer already gave is an error, not a loop.

    Example upstream payload: `{"results": [...], "next_cursor": "eyJrIjoiMDEwMS4uLiJ9"}`
    """

    kind = "cursor"
    defaults: ClassVar[dict[str, Any]] = {"token_field": "next_cursor", "token_param": "cursor",
                                          "size_param": "limit", "page_size": 500}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.seen: set[str] = set()

    def first(self) -> dict[str, Any]:
        return {self.cfg["size_param"]: int(self.cfg["page_size"])} if self.cfg["size_param"] else {}

    def next(self, params: dict[str, Any], response: dict[str, Any], n_records: int) -> dict[str, Any] | None:
        token = dig(response, self.cfg["token_field"])
        if token in (None, ""):
            return None
        if str(token) in self.seen:
            raise RuntimeError(f"the peer repeated next-page token {str(token)[:40]!r}; refusing to loop")
        self.seen.add(str(token))
        return {**params, self.cfg["token_param"]: token}


@register("next_link")
class NextLinkPaginator(_Configured):
    """Follow the absolute URL of the next page the peer gives (`links.next`); none = last page.

    Example upstream payload: `{"items": [...], "links": {"next": "https://.../civil-servants?page=3&..."}}`
    """

    kind = "next_link"
    defaults: ClassVar[dict[str, Any]] = {"next_field": "links.next", "size_param": "per_page", "page_size": 200}

    def first(self) -> dict[str, Any]:
        return {self.cfg["size_param"]: int(self.cfg["page_size"])} if self.cfg["size_param"] else {}

    def next(self, params: dict[str, Any], response: dict[str, Any], n_records: int) -> dict[str, Any] | None:
        link = dig(response, self.cfg["next_field"])
        return {"__url__": str(link)} if link else None


def make_paginator(kind: str, params: dict[str, Any]) -> Paginator:
    if kind not in PAGINATORS:  # perhaps an installed package's (lgsp.plugins)
        from lgsp.plugins import load_plugins

        load_plugins()
    try:
        cls = PAGINATORS[kind]
    except KeyError:
        raise ValueError(f"unknown paginator '{kind}' (known: {', '.join(sorted(PAGINATORS))}; an installed "
                         "package adds one by the entry point group lgsp.paginators)") from None
    return cls(**params)  # type: ignore[no-any-return]
