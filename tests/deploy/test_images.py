"""The images' Python requirements (deploy/requirements.py, derived from pyproject.toml): the gateway's leave torch
and the model stack out yet cover every module the gateway imports; the worker's plus torch are the whole list."""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from services.stack import ROOT

# deploy/ is a folder of files for the images, not a package (and pytest names tests/deploy `deploy`): load by path.
_spec = importlib.util.spec_from_file_location("deploy_requirements", ROOT / "deploy" / "requirements.py")
assert _spec is not None and _spec.loader is not None
images = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(images)
TORCH, LOCAL, dependencies, client_dependencies, requirement_name, requirements = (
    images.TORCH,
    images.LOCAL,
    images.dependencies,
    images.client_dependencies,
    images.requirement_name,
    images.requirements,
)

# Imported by libraries only when present (inside try/except), so the gateway runs without them.
OPTIONAL_IMPORTS = {
    "grpcio-tools": "grpc imports grpc_tools for runtime .proto loading if installed",
    "pyyaml": "kombu registers a YAML serializer if PyYAML is installed",
    "psutil": "the OpenTelemetry SDK's process resource uses it if installed",
    "setuptools": "its .pth hook (_distutils_hack) loads at interpreter start in any venv that has it",
    "cryptography": "redis.utils imports it if installed (a dev dependency: the client's TLS test certificates)",
}
# The project itself (installed with --no-deps into the image) and its client (installed from clients/python).
PROJECTS = {"cm3leon", "cm3leon-client"}


def closure(roots: list[str]) -> set[str]:
    """Every distribution the requirements pull in, through the installed metadata (extras and markers applied)."""
    seen: set[str] = set()
    pending = [(Requirement(r), set(Requirement(r).extras)) for r in roots]
    while pending:
        requirement, extras = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen and not extras:
            continue
        seen.add(name)
        for line in metadata.requires(requirement.name) or []:
            child = Requirement(line)
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in environments):
                pending.append((child, set(child.extras)))
    return seen


def imported_distributions(module: str) -> set[str]:
    """Distributions owning a file of a module that `import module` loads (in a fresh interpreter)."""
    code = (
        f"import json, sys, {module}; "
        "print(json.dumps(sorted({getattr(m, '__file__', None) or '' for m in list(sys.modules.values())})))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    files = set(json.loads(result.stdout))
    owners: set[str] = set()
    for distribution in metadata.distributions():
        location = distribution.locate_file("")
        for path in distribution.files or []:
            if str(location / path) in files:
                owners.add(canonicalize_name(distribution.metadata["Name"]))
                break
    return owners


def test_gateway_requirements_cover_its_imports_without_torch() -> None:
    gateway = requirements("gateway")
    assert not {requirement_name(r) for r in gateway} & TORCH
    pulled_in = closure(gateway + client_dependencies())
    assert "torch" not in pulled_in and "nvidia-cudnn-cu12" not in pulled_in
    imported = imported_distributions("services.gateway")
    assert {"grpcio", "celery", "redis", "minio"} <= imported, "the probe sees the gateway's imports"
    missing = imported - pulled_in - set(OPTIONAL_IMPORTS) - PROJECTS
    assert not missing, f"the gateway imports {missing}, which its image would not install"


def test_worker_requirements_are_the_rest() -> None:
    worker = requirements("worker")
    assert {requirement_name(r) for r in worker} | TORCH | LOCAL == {requirement_name(r) for r in dependencies()}
    assert set(requirements("gateway")) <= set(worker)


def test_client_is_slim_and_installed_first_in_every_image() -> None:
    """The client distribution brings grpcio, protobuf and typer, never the model stack; both images install it
    from the source tree before the project's requirements (it is on no index)."""
    client = closure(client_dependencies())
    assert {"grpcio", "protobuf", "typer"} <= client and not client & {"torch", "numpy", "celery", "redis"}
    assert not {requirement_name(r) for image in ("gateway", "worker") for r in requirements(image)} & LOCAL
    for image in ("gateway", "worker"):
        text = (ROOT / "deploy" / f"{image}.Dockerfile").read_text()
        assert "COPY clients/python/ clients/python/" in text, image
        assert text.index("pip install ./clients/python") < text.index("requirements.py " + image), image
