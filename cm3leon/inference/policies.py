"""Decoding policies: a model's own way of serving a kind, turned on by name in its `capabilities.json`.

The engine's default path for every kind is generic (prompt -> generate -> an optional generic reranker). A policy
replaces that path for one kind, e.g. the shapes world's edit planning and redraws. Policies live in families
(`cm3leon.policies.<family>`); naming one (`"shapes.edit_redraw"`) imports its family, whose module registers its
policies with `@policy`. A request asks for the generic path with `plain=True` (the API's `JobRequest.plain`).

A model trained on a world also reads requests in that world's symbols, on every path: the world's family
registers its `RequestReader` with `@reader`; a model without a world reads them generically (`reader_for`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cm3leon.bundle import ModelBundle
from cm3leon.inference.running import RunContext
from cm3leon.inference.task_inputs import RequestReader
from cm3leon.requests import EngineResult

PolicyFunction = Callable[[RunContext, Any], EngineResult]
ReaderFactory = Callable[[ModelBundle], RequestReader]
FAMILY_PACKAGE = "cm3leon.policies"
# The family of a bundle's world: every world a checkpoint records is the shapes world (`cm3leon.data.world`).
WORLD_FAMILY = "shapes"


@dataclass(frozen=True)
class Policy:
    name: str
    kind: str
    run: PolicyFunction


_REGISTERED: dict[str, Policy] = {}
_READERS: dict[str, ReaderFactory] = {}


def policy(name: str, kind: str) -> Callable[[PolicyFunction], PolicyFunction]:
    """Register the decorated function as policy `name` (`family.policy`) of job kind `kind`."""

    def register(function: PolicyFunction) -> PolicyFunction:
        _REGISTERED[name] = Policy(name, kind, function)
        return function

    return register


def reader(family: str) -> Callable[[ReaderFactory], ReaderFactory]:
    """Register the decorated factory as the request reader of the world of policy family `family`."""

    def register(factory: ReaderFactory) -> ReaderFactory:
        _READERS[family] = factory
        return factory

    return register


def reader_for(bundle: ModelBundle) -> RequestReader:
    """How `bundle`'s model reads requests: its world's reader, or the generic one when it has no world."""
    if bundle.world is None:
        return RequestReader(bundle.image_size, bundle.vocab.config.location_bins)
    if WORLD_FAMILY not in _READERS:
        _import_family(WORLD_FAMILY, f"the world's reader of {bundle.directory}")
    return _READERS[WORLD_FAMILY](bundle)


def _import_family(family: str, what: str) -> None:
    try:
        importlib.import_module(f"{FAMILY_PACKAGE}.{family}")
    except ModuleNotFoundError as error:
        raise ValueError(f"{what}: no policy family {family!r} ({FAMILY_PACKAGE}.{family})") from error


def resolve(name: str, kind: str) -> Policy:
    """The registered policy `name` for `kind`; a ValueError naming what is wrong otherwise."""
    family = name.partition(".")[0]
    if name not in _REGISTERED and family:
        _import_family(family, f"policy {name!r}")
    found = _REGISTERED.get(name)
    if found is None:
        raise ValueError(f"unknown policy {name!r}; registered: {sorted(_REGISTERED)}")
    if found.kind != kind:
        raise ValueError(f"policy {name!r} serves {found.kind}, not {kind}")
    return found
