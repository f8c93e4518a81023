"""The import contracts (`[tool.importlinter]` in pyproject.toml, run by `make lint`) hold on this tree and catch a
reverse import: a copy of the tracked files passes `lint-imports`, and fails once a core module imports `services`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def tracked_copy(destination: Path) -> Path:
    """The files git tracks (and untracked, not ignored ones: work in progress), copied under `destination`."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    for name in filter(None, listing.stdout.decode().split("\0")):
        source = ROOT / name
        if source.suffix in (".py", ".toml", ".pyi") and source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return destination


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on `tree`, which shadows any installed copy of the project on the import path."""
    path = os.pathsep.join([str(tree), str(tree / "clients" / "python")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not LINT_IMPORTS.exists():
        pytest.fail("lint-imports is not installed: `make install` (import-linter is a dev dependency)")
    return tracked_copy(tmp_path_factory.mktemp("tree"))


def test_contracts_hold(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    contracts = len(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"])
    assert f"{contracts} kept, 0 broken" in result.stdout


def test_a_reverse_import_breaks_the_core_contract(tree: Path) -> None:
    module = tree / "cm3leon" / "data" / "grid.py"
    original = module.read_text()
    module.write_text(original + "\nimport services.keys  # a deliberate reverse import\n")
    try:
        result = lint_imports(tree)
    finally:
        module.write_text(original)
    assert result.returncode != 0
    assert "The model core imports nothing of the serving side or the client BROKEN" in result.stdout
    assert "cm3leon.data.grid -> services.keys" in result.stdout


def test_torch_in_the_gateway_side_breaks_its_contract(tree: Path) -> None:
    module = tree / "services" / "keys.py"
    original = module.read_text()
    module.write_text(original + "\nimport torch  # the model stack in the gateway's process\n")
    try:
        result = lint_imports(tree)
    finally:
        module.write_text(original)
    assert result.returncode != 0
    assert "The gateway side never imports the worker or torch BROKEN" in result.stdout


def test_an_upward_import_in_the_core_breaks_its_layers(tree: Path) -> None:
    module = tree / "cm3leon" / "model" / "kv_cache.py"
    original = module.read_text()
    module.write_text(original + "\nimport cm3leon.inference.engine  # the model reaching up into the engine\n")
    try:
        result = lint_imports(tree)
    finally:
        module.write_text(original)
    assert result.returncode != 0
    assert "cm3leon.model is not allowed to import cm3leon.inference" in result.stdout
    assert "cm3leon.model.kv_cache -> cm3leon.inference.engine" in result.stdout
