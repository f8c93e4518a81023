"""The client distribution stands alone: installed into an empty virtual environment it brings grpcio, protobuf and
typer but not torch, and runs a job against the embedded stack (tests/serving's) with that environment's python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from services.stack import ROOT

pytestmark = pytest.mark.slow  # a virtual environment, a pip install and a real stack

CLIENT_DIR = ROOT / "clients" / "python"
JOB_SCRIPT = """
import json, sys
import cm3leon_client as cm3

target, api_key, out = sys.argv[1:]
with cm3.Client(target, api_key) as client:
    job = client.wait(client.submit(cm3.text_to_image("a large red circle at the top left", seed=1)).job_id)
    paths = cm3.download_outputs(job, out)
print(json.dumps({"state": cm3.api.jobs_pb2.JobState.Name(job.state), "files": [str(p) for p in paths]}))
"""


def isolated_env() -> dict[str, str]:
    """This process's environment without any path to the project (the venv must find only what it installed)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-venv")
    # Installed from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = shutil.copytree(CLIENT_DIR, root / "source", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    directory = root / "venv"
    venv.create(directory, with_pip=True)
    python = directory / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        env=isolated_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def run_in(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=isolated_env(), capture_output=True, text=True, timeout=300
    )


def test_the_client_venv_has_no_model_stack(client_python: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.util as u; print([m for m in ('torch', 'numpy', 'cm3leon', 'services') if u.find_spec(m)])"
    )
    result = run_in(client_python, "-c", probe, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    failed = run_in(client_python, "-c", "import torch", cwd=tmp_path)
    assert failed.returncode != 0 and "No module named 'torch'" in failed.stderr


def test_a_job_runs_from_the_client_venv(client_python: Path, target: str, tmp_path: Path) -> None:
    result = run_in(client_python, "-c", JOB_SCRIPT, target, "key-a", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["state"] == "JOB_STATE_SUCCEEDED"
    png, record = (Path(p) for p in report["files"])
    assert png.read_bytes().startswith(b"\x89PNG") and json.loads(record.read_text())["state"] == "JOB_STATE_SUCCEEDED"
    listed = run_in(
        client_python.parent / "cm3leon-client", "jobs", "list", "--target", target, "--api-key", "key-a", cwd=tmp_path
    )
    assert listed.returncode == 0 and png.stem.rsplit("-", 1)[0] in listed.stdout, listed.stderr
