"""The docker-compose topology on loopback: Redis, S3 (weed mini standing in for MinIO), two Celery workers with
distinct names on every queue, one gateway. Jobs spread over both workers; a job survives losing its worker
whole (SIGKILL to the worker's process group, as when its container dies); the images' healthchecks
(deploy/healthcheck.py) answer for real.

Qdrant runs in local mode, one directory per worker (local mode allows one client per directory; compose runs one
Qdrant server for all of them). The limits below are short so that a lost worker's message comes back within
the test: soft < hard time limit < visibility timeout, as the worker checks at start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

import cm3leon_client as api
from cm3leon_client import Client
from cm3leon_client.api import jobs_pb2
from services.keys import Keys
from services.presence import live_workers
from services.queue import UNACKED_RESTORE_INTERVAL_S, make_celery
from services.stack import ROOT, Child, Stack
from tests.serving.fixtures import API_KEYS, MEMORY_NAME, build_tiny_memory, build_tiny_model_dir, spans_of

# The compose topology on loopback: Redis, S3, two Celery workers and the gateway as processes.
pytestmark = pytest.mark.slow

WORKER_NAMES = ("worker-a", "worker-b")
# Decode steps slowed so that jobs overlap and one can be caught running (65 steps per image: ~1.3 s).
STEP_DELAY_S = 0.02
SOFT_TIME_LIMIT_S, HARD_TIME_LIMIT_S, VISIBILITY_TIMEOUT_S = 15, 18, 20
# Images of the job whose worker is killed: long enough (~5 s) to be caught and killed mid-decode.
DOOMED_JOB_IMAGES = 4
INSPECT_TIMEOUT_S = 1.0
JOBS_TO_SPREAD = 6
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"


@dataclass
class ComposeStack:
    stack: Stack
    workers: dict[str, Child]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.stack.gateway_port}"

    def worker_of_pid(self, pid: int) -> str:
        """The worker (by name) whose process group holds `pid` (a Celery pool process)."""
        group = os.getpgid(pid)
        [name] = [name for name, child in self.workers.items() if child.process.pid == group]
        return name


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    root = tmp_path_factory.mktemp("compose")
    model_dir = build_tiny_model_dir(root / "artifacts")
    retriever_dir, memory_path = build_tiny_memory(model_dir, root / "artifacts")
    spans_path = root / "spans.jsonl"
    stack = Stack(
        root / "run",
        namespace="dc",
        environment={
            "CM3LEON_OTEL_EXPORTER": f"file:{spans_path}",
            "CM3LEON_API_KEYS": json.dumps(API_KEYS),
            "CM3LEON_SOFT_TIME_LIMIT_S": str(SOFT_TIME_LIMIT_S),
            "CM3LEON_HARD_TIME_LIMIT_S": str(HARD_TIME_LIMIT_S),
            "CM3LEON_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
        },
    )
    workers: dict[str, Child] = {}
    try:
        stack.start_redis()
        stack.start_s3()
        for name in WORKER_NAMES:
            own_memory = root / f"qdrant-{name}"
            shutil.copytree(memory_path, own_memory)
            env = {
                "CM3LEON_MODEL_DIR": str(model_dir),
                "CM3LEON_RETRIEVER_DIR": str(retriever_dir),
                "CM3LEON_MEMORY_PATH": str(own_memory),
                "CM3LEON_MEMORY_NAME": MEMORY_NAME,
                "CM3LEON_MEMORY_DIVERSITY_THRESHOLD": "1.01",
                "CM3LEON_DEVICE": "cpu",
                "CM3LEON_DEBUG_STEP_DELAY_S": str(STEP_DELAY_S),
                "OMP_NUM_THREADS": "1",
            }
            workers[name] = stack.start_worker(name, env)
        stack.start_gateway()
        stack.spans_path = spans_path  # type: ignore[attr-defined]  # where tests.serving.fixtures.spans_of reads
        yield ComposeStack(stack, workers)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def client(compose: ComposeStack) -> Iterator[Client]:
    with Client(compose.target, "key-a") as c:
        yield c


def run_job_pids(stack: Stack, job_id: str) -> list[int]:
    """Pids of the processes that ran the job (one `worker.run_job` span per delivery that finished)."""
    runs = [s for s in spans_of(stack) if s["name"] == "worker.run_job"]
    return [s["pid"] for s in runs if s["attributes"].get("job.id") == job_id]


def wait_for_spans(stack: Stack, job_ids: list[str], timeout_s: float = 10.0) -> dict[str, list[int]]:
    """The worker's span of a job is written just after the job's final snapshot: wait for all of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {job_id: run_job_pids(stack, job_id) for job_id in job_ids}
        if all(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_two_workers_with_distinct_names(compose: ComposeStack) -> None:
    store = redis.Redis(port=compose.stack.redis_port)
    heartbeats = live_workers(store, Keys(compose.stack.namespace))
    assert len(heartbeats) == len(WORKER_NAMES), heartbeats
    app = make_celery(compose.stack.settings())
    replies = app.control.inspect(timeout=2.0).ping() or {}
    assert {node.split("@")[0] for node in replies} == set(WORKER_NAMES), replies


def test_jobs_spread_across_both_workers(compose: ComposeStack, client: Client) -> None:
    submitted = [client.submit(api.text_to_image(f"a spread job {i}", seed=i + 1)) for i in range(JOBS_TO_SPREAD)]
    finished = [client.wait(job.job_id, timeout_s=120) for job in submitted]
    assert [job.state for job in finished] == [jobs_pb2.JOB_STATE_SUCCEEDED] * JOBS_TO_SPREAD
    pids = wait_for_spans(compose.stack, [job.job_id for job in submitted])
    ran_on = {job_id: {compose.worker_of_pid(pid) for pid in job_pids} for job_id, job_pids in pids.items()}
    assert all(len(names) == 1 for names in ran_on.values()), ran_on
    per_worker = {name: sum(name in names for names in ran_on.values()) for name in WORKER_NAMES}
    assert all(count >= 1 for count in per_worker.values()), per_worker


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], cwd=ROOT, env=full_env, capture_output=True, text=True
    )


def test_image_healthchecks(compose: ComposeStack) -> None:
    assert healthcheck("gateway", "--target", compose.target).returncode == 0
    closed = compose.stack.redis_port  # a port where no gRPC server listens
    unhealthy = healthcheck("gateway", "--target", f"127.0.0.1:{closed}")
    assert unhealthy.returncode == 1 and "UNAVAILABLE" in unhealthy.stderr, unhealthy.stderr
    env = {"CM3LEON_REDIS_URL": compose.stack.redis_url, "CM3LEON_NAMESPACE": compose.stack.namespace}
    assert healthcheck("worker", env=env).returncode == 0
    other_host = healthcheck("worker", "--hostname", "no-such-container", env=env)
    assert other_host.returncode == 1 and "no heartbeat" in other_host.stderr


def test_job_survives_losing_its_worker(compose: ComposeStack, client: Client) -> None:
    """SIGKILL the whole worker (main process and pool) mid-job: its message stays unacknowledged until the
    visibility timeout, then the surviving worker's sweep restores it and runs the job again."""
    job = client.submit(api.text_to_image("a job whose worker dies", num_images=DOOMED_JOB_IMAGES, seed=7))
    for snapshot in client.watch(job.job_id, timeout_s=60):
        if snapshot.state == jobs_pb2.JOB_STATE_RUNNING and snapshot.progress.tokens_done > 0:
            break
    app = make_celery(compose.stack.settings())
    active = app.control.inspect(timeout=INSPECT_TIMEOUT_S).active() or {}
    [(node, pool_pid)] = [
        (node, task["worker_pid"]) for node, tasks in active.items() for task in tasks if job.job_id in task["args"]
    ]
    victim = compose.worker_of_pid(pool_pid)
    assert node.startswith(f"{victim}@")
    killed_at = time.monotonic()
    os.killpg(compose.workers[victim].process.pid, signal.SIGKILL)
    compose.workers[victim].process.wait()
    assert client.get(job.job_id).state == jobs_pb2.JOB_STATE_RUNNING, "killed mid-job"

    final = client.wait(job.job_id, timeout_s=VISIBILITY_TIMEOUT_S + 10 * UNACKED_RESTORE_INTERVAL_S + 30)
    recovered_s = time.monotonic() - killed_at
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
    assert len(final.result.images) == DOOMED_JOB_IMAGES and final.seed == 7
    record = json.loads(redis.Redis(port=compose.stack.redis_port).get(Keys(compose.stack.namespace).job(job.job_id)))
    assert record["deliveries"] == 2, "one delivery lost with the worker, one that finished"
    [survivor] = set(WORKER_NAMES) - {victim}
    [pid] = wait_for_spans(compose.stack, [job.job_id])[job.job_id]
    assert compose.worker_of_pid(pid) == survivor
    # Not before the broker's visibility timeout (the message was not lost early nor run twice at once), and soon
    # after it: the workers' sweep for lost messages runs every UNACKED_RESTORE_INTERVAL_S (kombu's default: 100 s).
    assert VISIBILITY_TIMEOUT_S - 1 <= recovered_s < VISIBILITY_TIMEOUT_S + 2 * UNACKED_RESTORE_INTERVAL_S + 20, (
        recovered_s
    )
