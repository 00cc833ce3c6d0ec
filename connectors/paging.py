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


@register("page_number")
class PageNumberPaginator:
    """`page=1,2,...` until `total_pages` is reached (or a short/empty page).

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
        if n_records == 0 or (total is None and n_records < self.page_size):
            return None
        return {**params, self.page_param: page + 1}


def make_paginator(kind: str, params: dict[str, Any]) -> Paginator:
    try:
        cls = PAGINATORS[kind]
    except KeyError:
        raise ValueError(f"unknown paginator '{kind}' (known: {', '.join(sorted(PAGINATORS))})") from None
    return cls(**params)  # type: ignore[no-any-return]
