"""What an agency sees of a personal-data column its grant does not include.

Policies are small functions registered by name (catalog/sharing.yaml, `personal:`):

    mask       "079203001234" -> "*********234"   (the last 3 characters stay, to help a clerk match)
    pseudonym  "079203001234" -> "ps_5f0c...e1"   (HMAC-SHA256 keyed by LGSP_GATEWAY_PSEUDONYM_KEY:
                                                   the same person gets the same pseudonym in every
                                                   dataset and request, so records can be linked
                                                   without the ID)
    withhold   "079203001234" -> null
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from catalog.models import SharedDatasetSpec

PersonalTransform = Callable[[Any, bytes], Any]
PERSONAL_POLICIES: dict[str, PersonalTransform] = {}


def register(name: str) -> Callable[[PersonalTransform], PersonalTransform]:
    """Register a personal-data policy under `name`."""

    def decorate(transform: PersonalTransform) -> PersonalTransform:
        PERSONAL_POLICIES[name] = transform
        return transform

    return decorate


@register("mask")
def mask(value: Any, _key: bytes) -> str | None:
    """Every character but the last three replaced by `*` (short values fully)."""
    return _mask(value)


def _mask(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return "*" * len(text) if len(text) <= 3 else "*" * (len(text) - 3) + text[-3:]


@register("pseudonym")
def pseudonym(value: Any, key: bytes) -> str | None:
    """`ps_` + the first 32 hex digits of HMAC-SHA256(key, value)."""
    return _pseudonymiser(key)(value)


def _pseudonym(value: Any, key: bytes) -> str | None:
    if value is None:
        return None
    keyed = _keyed(key).copy()  # the key's inner/outer pads are computed once per key
    keyed.update(str(value).encode())
    return "ps_" + keyed.hexdigest()[:32]


@lru_cache(maxsize=4)
def _pseudonymiser(key: bytes) -> Callable[[Any], str | None]:
    """`pseudonym` with `key` bound, remembering the last 65,536 values (about 15 MB per process):
    the same people are read page after page, and a hit is a dictionary lookup instead of an HMAC."""
    return lru_cache(maxsize=65_536)(lambda value: _pseudonym(value, key))


@lru_cache(maxsize=4)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


@register("withhold")
def withhold(_value: Any, _key: bytes) -> None:
    """Nothing."""
    return None


def protections(shared: SharedDatasetSpec, granted: frozenset[str]) -> dict[str, PersonalTransform]:
    """The transform of each personal column the grant does not include."""
    return {column: PERSONAL_POLICIES[policy] for column, policy in shared.personal.items()
            if column not in granted}


def keyed(transform: PersonalTransform, key: bytes) -> Callable[[Any], Any] | None:
    """`transform` as a function of the value alone (`key` bound); None for `withhold` (always null)."""
    if transform is withhold:
        return None
    if transform is pseudonym:
        return _pseudonymiser(key)
    if transform is mask:
        return _mask
    return lambda value: transform(value, key)
