"""A real stack for the fault tests (redis-server with AOF, `weed mini`, a Celery worker with the `tiny` model,
the gateway), with short leases and a fast reaper so that every recovery shows within seconds; and `side_stack`
for a worker and gateway with their own settings (own namespace) on the same Redis and S3."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cm3leon_client import Client
from services.stack import Stack
from tests.serving.fixtures import API_KEYS, MEMORY_NAME, build_tiny_memory, build_tiny_model_dir

STEP_DELAY_S = 0.02  # decode steps slowed so that a running job can be caught (65 steps per image)
FAST_RECOVERY = {
    "CM3LEON_LEASE_TTL_S": "3",
    "CM3LEON_REAPER_INTERVAL_S": "0.5",
    "CM3LEON_OUTBOX_AGE_S": "1",
    # Above the longest S3 outage a test makes: the worker runs jobs at once, so a job can retry from its start.
    "CM3LEON_S3_RETRY_DEADLINE_S": "90",
}


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fault-artifacts")
    model_dir = build_tiny_model_dir(root)
    retriever_dir, memory_path = build_tiny_memory(model_dir, root)
    return {
        "CM3LEON_MODEL_DIR": str(model_dir),
        "CM3LEON_RETRIEVER_DIR": str(retriever_dir),
        "CM3LEON_MEMORY_PATH": str(memory_path),
        "CM3LEON_MEMORY_NAME": MEMORY_NAME,
        "CM3LEON_MEMORY_DIVERSITY_THRESHOLD": "1.01",
        "CM3LEON_DEVICE": "cpu",
        "CM3LEON_DEBUG_STEP_DELAY_S": str(STEP_DELAY_S),
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, str]) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("fault-stack")
    stack = Stack(root / "run", namespace="f", environment={"CM3LEON_API_KEYS": json.dumps(API_KEYS), **FAST_RECOVERY})
    try:
        stack.start_redis()
        stack.start_s3()
        stack.start_worker("worker", artifacts)
        stack.start_gateway()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def side_stack(stack: Stack, artifacts: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """side_stack(namespace, **settings) -> a worker and a gateway of their own namespace and settings on the
    session's Redis and S3 (stopped after the test)."""
    started: list[Stack] = []

    def start(namespace: str, worker_env: dict[str, str] | None = None) -> Stack:
        side = Stack(tmp_path / namespace, namespace=namespace, environment=dict(stack.environment))
        side.redis_port, side.s3_port = stack.redis_port, stack.s3_port
        started.append(side)
        memory = tmp_path / namespace / "qdrant"  # Qdrant local mode: one process per directory
        shutil.copytree(artifacts["CM3LEON_MEMORY_PATH"], memory)
        side.start_worker("worker", {**artifacts, "CM3LEON_MEMORY_PATH": str(memory), **(worker_env or {})})
        side.start_gateway()
        return side

    try:
        yield start
    finally:
        for side in started:
            side.stop()


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[Client]:
    with Client(f"127.0.0.1:{stack.gateway_port}", "key-a") as c:
        yield c
