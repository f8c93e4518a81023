"""One real stack for the security tests (redis-server, `weed mini`, a Celery worker with the `tiny` model and
memory, a gateway) whose API keys come from a keys file, in their hashed form, with scopes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cm3leon_client import Client
from services.auth import CORPUS_WRITE, READ, SCOPES, SUBMIT, hashed_entry, keys_file_env
from services.stack import Stack
from tests.serving.fixtures import MEMORY_NAME, build_tiny_memory, build_tiny_model_dir

TENANT_SCOPES = (SUBMIT, READ, CORPUS_WRITE)
# key -> (tenant, scopes)
KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "key-a": ("tenant-a", TENANT_SCOPES),
    "key-b": ("tenant-b", TENANT_SCOPES),
    "key-read-only": ("tenant-a", (READ,)),
    "key-admin": ("operators", tuple(SCOPES)),
    "key-bulk": ("tenant-bulk", TENANT_SCOPES),  # big corpus writes, apart from the tenancy tests' tenants
    "key-fuzz": ("tenant-fuzz", TENANT_SCOPES),
    **{f"key-replies-{n}": (f"tenant-replies-{n}", TENANT_SCOPES) for n in (1, 2, 3)},  # concurrent corpus calls
}


def write_keys(path: Path, keys: dict[str, tuple[str, tuple[str, ...]]]) -> None:
    """The keys file as an operator writes it: hashes only."""
    entries: dict = {}
    for key, (tenant, scopes) in keys.items():
        entries.update(hashed_entry(key, tenant, scopes))
    path.write_text(json.dumps(entries))


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys.json"
    write_keys(path, KEYS)
    return path


@pytest.fixture(scope="session")
def secure_stack(tmp_path_factory: pytest.TempPathFactory, keys_file: Path) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("secure-stack")
    model_dir = build_tiny_model_dir(root / "artifacts")
    retriever_dir, memory_path = build_tiny_memory(model_dir, root / "artifacts")
    spans = root / "spans.jsonl"
    stack = Stack(
        root / "run",
        namespace="sec",
        environment={**keys_file_env(keys_file), "CM3LEON_OTEL_EXPORTER": f"file:{spans}"},
    )
    stack.spans_path = spans  # type: ignore[attr-defined]
    worker_env = {
        "CM3LEON_MODEL_DIR": str(model_dir),
        "CM3LEON_RETRIEVER_DIR": str(retriever_dir),
        "CM3LEON_MEMORY_PATH": str(memory_path),
        "CM3LEON_MEMORY_NAME": MEMORY_NAME,
        "CM3LEON_MEMORY_DIVERSITY_THRESHOLD": "1.01",
        "CM3LEON_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    try:
        stack.start_redis()
        stack.start_s3()
        stack.start_worker("worker", worker_env)
        stack.start_gateway(env={"CM3LEON_SHARED_MEMORIES": json.dumps([MEMORY_NAME])})
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def secure_target(secure_stack: Stack) -> str:
    return f"127.0.0.1:{secure_stack.gateway_port}"


@pytest.fixture(scope="session")
def client_a(secure_target: str) -> Iterator[Client]:
    with Client(secure_target, "key-a") as client:
        yield client


@pytest.fixture(scope="session")
def client_b(secure_target: str) -> Iterator[Client]:
    with Client(secure_target, "key-b") as client:
        yield client


@pytest.fixture(scope="session")
def admin(secure_target: str) -> Iterator[Client]:
    with Client(secure_target, "key-admin") as client:
        yield client
