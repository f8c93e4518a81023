"""Reading docker-compose files offline the way Compose does, for the tests: YAML with anchors, merge keys and the
`!reset` tag; `.env` parsing; `${VAR}`, `${VAR:-default}`, `${VAR:?message}` and `$$` interpolation; and the
merge of an override file onto the base file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.stack import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "deploy" / "compose.cpu.yml"
ENV_EXAMPLE = ROOT / ".env.example"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}; `$$` is a literal `$`.
INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


@dataclass(frozen=True)
class Reset:
    """Compose's `!reset`: the override removes (or replaces) what the base file says."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.MappingNode):
        return Reset(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node, deep=True))
    return Reset(loader.construct_scalar(node) or None)


ComposeLoader.add_constructor("!reset", _reset)


def load(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The file as Compose parses it, before interpolation (anchors resolved, merge keys applied)."""
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # a SafeLoader subclass


def merge(base: Any, override: Any) -> Any:
    """Mappings merge key by key, `!reset` replaces, anything else in the override wins."""
    if isinstance(override, Reset):
        return override.value
    if isinstance(override, dict):
        base = base if isinstance(base, dict) else {}
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base.get(key), value)
        return {k: v for k, v in merged.items() if v is not None or k not in override}
    return override


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=VALUE lines (comments and blanks skipped; single or double quotes around a value removed)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class UnsetVariable(KeyError):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Every string in `value` interpolated as Compose does; a `:?` variable unset in `env` raises."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if present:
            return env[name]
        if op in (":?", "?"):
            raise UnsetVariable(f"{name}: {arg}")
        return arg if op in (":-", "-") else ""

    return INTERPOLATION.sub(substitute, value)


def variables(value: Any) -> list[tuple[str, str | None, str | None]]:
    """Every `${...}` in `value`: (name, operator, argument)."""
    if isinstance(value, dict):
        return [v for item in value.values() for v in variables(item)]
    if isinstance(value, list):
        return [v for item in value for v in variables(item)]
    if not isinstance(value, str):
        return []
    return [(m.group("name"), m.group("op"), m.group("arg")) for m in INTERPOLATION.finditer(value) if m.group("name")]


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (Compose also allows a list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}
