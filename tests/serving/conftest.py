"""One real stack per test session: redis-server, `weed mini` (S3), a Celery worker process with the `tiny`
model and a Qdrant local-mode memory, and the gateway, all on free 127.0.0.1 ports, stopped at the end."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cm3leon_client import Client
from services.stack import Stack
from tests.serving.fixtures import API_KEYS, MEMORY_NAME, build_tiny_memory, build_tiny_model_dir

# Decode steps are slowed so that a running job can be watched and cancelled mid-decode (65 steps: ~1.3 s).
STEP_DELAY_S = 0.02
WORKER_JOBS = 4  # jobs the worker runs at once (tests/serving/test_worker_jobs.py)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    model_dir = build_tiny_model_dir(root / "artifacts")
    retriever_dir, memory_path = build_tiny_memory(model_dir, root / "artifacts")
    stack = Stack(
        root / "run",
        namespace="t",
        environment={
            "CM3LEON_OTEL_EXPORTER": f"file:{root / 'spans.jsonl'}",
            "CM3LEON_API_KEYS": json.dumps(API_KEYS),
        },
    )
    worker_env = {
        "CM3LEON_MODEL_DIR": str(model_dir),
        "CM3LEON_RETRIEVER_DIR": str(retriever_dir),
        "CM3LEON_MEMORY_PATH": str(memory_path),
        "CM3LEON_MEMORY_NAME": MEMORY_NAME,
        "CM3LEON_MEMORY_DIVERSITY_THRESHOLD": "1.01",
        "CM3LEON_DEVICE": "cpu",
        "CM3LEON_DEBUG_STEP_DELAY_S": str(STEP_DELAY_S),
        "CM3LEON_WORKER_JOBS": str(WORKER_JOBS),
        "OMP_NUM_THREADS": "1",
    }
    try:
        stack.start_redis()
        stack.start_s3()
        stack.start_worker("worker", worker_env)
        stack.start_gateway()
        stack.spans_path = root / "spans.jsonl"  # type: ignore[attr-defined]
        stack.worker_env = worker_env  # type: ignore[attr-defined]
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def target(stack: Stack) -> str:
    return f"127.0.0.1:{stack.gateway_port}"


@pytest.fixture(scope="session")
def client(target: str) -> Iterator[Client]:
    with Client(target, "key-a") as c:
        yield c


@pytest.fixture(scope="session")
def other_client(target: str) -> Iterator[Client]:
    with Client(target, "key-b") as c:
        yield c
