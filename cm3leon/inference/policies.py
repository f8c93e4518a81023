"""Decoding policies: a model's own way of serving a kind, turned on by name in its `capabilities.json`.

The engine's default path for every kind is generic (prompt -> generate -> an optional generic reranker). A policy
replaces that path for one kind, e.g. the shapes world's edit planning and redraws. Policies live in families
(`cm3leon.policies.<family>`); naming one (`"shapes.edit_redraw"`) imports its family, whose module registers its
policies with `@policy`. A request asks for the generic path with `plain=True` (the API's `JobRequest.plain`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cm3leon.inference.running import RunContext
from cm3leon.requests import EngineResult

PolicyFunction = Callable[[RunContext, Any], EngineResult]
FAMILY_PACKAGE = "cm3leon.policies"


@dataclass(frozen=True)
class Policy:
    name: str
    kind: str
    run: PolicyFunction


_REGISTERED: dict[str, Policy] = {}


def policy(name: str, kind: str) -> Callable[[PolicyFunction], PolicyFunction]:
    """Register the decorated function as policy `name` (`family.policy`) of job kind `kind`."""

    def register(function: PolicyFunction) -> PolicyFunction:
        _REGISTERED[name] = Policy(name, kind, function)
        return function

    return register


def resolve(name: str, kind: str) -> Policy:
    """The registered policy `name` for `kind`; a ValueError naming what is wrong otherwise."""
    family = name.partition(".")[0]
    if name not in _REGISTERED and family:
        try:
            importlib.import_module(f"{FAMILY_PACKAGE}.{family}")
        except ModuleNotFoundError as error:
            raise ValueError(f"policy {name!r}: no policy family {family!r} ({FAMILY_PACKAGE}.{family})") from error
    found = _REGISTERED.get(name)
    if found is None:
        raise ValueError(f"unknown policy {name!r}; registered: {sorted(_REGISTERED)}")
    if found.kind != kind:
        raise ValueError(f"policy {name!r} serves {found.kind}, not {kind}")
    return found
