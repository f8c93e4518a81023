"""docker-compose.yml (and the CPU override merged onto it) against the Compose specification, offline: the schema
check-jsonschema vendors; Debian's `docker-compose config -q` as well where that binary is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.compose import COMPOSE_FILE, CPU_OVERRIDE, ENV_EXAMPLE, load, merge

CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True
    )


def test_compose_file_follows_the_compose_spec() -> None:
    result = validate(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_override_merged_follows_the_compose_spec(tmp_path: Path) -> None:
    merged = merge(load(COMPOSE_FILE), load(CPU_OVERRIDE))
    path = tmp_path / "merged.yml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("mutation", "where"),
    [
        (lambda c: c["services"]["redis"].update(healthcheck={"test": 5}), "healthcheck"),
        (lambda c: c["services"]["gateway"].update(depends_on={"redis": {"condition": "healthy"}}), "condition"),
        (lambda c: c["services"]["worker"].update(imagee="typo"), "imagee"),
    ],
    ids=["healthcheck-test-type", "depends-on-condition", "unknown-key"],
)
def test_the_schema_check_can_fail(tmp_path: Path, mutation: Callable[[dict[str, Any]], None], where: str) -> None:
    broken = load(COMPOSE_FILE)
    mutation(broken)
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    result = validate(path)
    assert result.returncode == 1 and where in result.stdout, result.stdout


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
@pytest.mark.parametrize("files", [[COMPOSE_FILE], [COMPOSE_FILE, CPU_OVERRIDE]], ids=["gpu", "cpu"])
def test_docker_compose_config(files: list[Path]) -> None:
    args = ["docker-compose", "--env-file", str(ENV_EXAMPLE)]
    for path in files:
        args += ["-f", str(path)]
    result = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, cwd=COMPOSE_FILE.parent)
    assert result.returncode == 0, result.stderr
