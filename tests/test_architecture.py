"""The shape of the code: no import cycles between modules, every job kind declared once and complete (proto field,
domain type, handler, gateway rules), and every policy a world offers registered for its kind."""

from __future__ import annotations

import dataclasses

import grimp
import pytest

from cm3leon.inference.handlers import HANDLERS
from cm3leon.inference.policies import resolve
from cm3leon.kinds import KINDS, SHAPES_POLICIES, Boxes, Range, Text
from cm3leon_client.api import jobs_pb2

PACKAGES = ("cm3leon", "services", "worker", "cm3leon_client", "cm3leon_cli", "cm3leon_stack")


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), i.e. every import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph(
        *PACKAGES, include_external_packages=False, exclude_type_checking_imports=True, cache_dir=None
    )
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.z", imported="a.x")
    assert import_cycles(graph) == [["a.x", "a.y"]]


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_every_kind_is_complete(kind) -> None:  # type: ignore[no-untyped-def]
    oneof = jobs_pb2.JobRequest.DESCRIPTOR.oneofs_by_name["kind"]
    field = {f.name: f for f in oneof.fields}[kind.name]
    proto_fields = set(field.message_type.fields_by_name)
    domain_fields = {f.name for f in dataclasses.fields(kind.request_type)}
    assert domain_fields <= proto_fields, "every domain field comes from the wire"
    ruled = {rule.name for rule in kind.rules} | set(kind.images)
    assert ruled <= proto_fields, "the gateway's rules name real fields"
    assert ("sampling" in proto_fields) == (kind.sampling != "none")
    assert kind.name in HANDLERS, "the engine runs it"
    for rule in kind.rules:
        assert isinstance(rule, Text | Range | Boxes)


@pytest.mark.parametrize("kind_name", sorted(SHAPES_POLICIES))
def test_every_shapes_policy_is_registered_for_its_kind(kind_name: str) -> None:
    assert resolve(SHAPES_POLICIES[kind_name], kind_name).kind == kind_name


def test_unknown_policies_fail_naming_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="no policy family 'nowhere'"):
        resolve("nowhere.edit", "edit")
    with pytest.raises(ValueError, match="unknown policy 'shapes.dance'"):
        resolve("shapes.dance", "edit")
    with pytest.raises(ValueError, match="serves edit, not caption"):
        resolve("shapes.edit_redraw", "caption")
