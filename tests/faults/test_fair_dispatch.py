"""Fair dispatch through the real gateway and a real Celery worker: a tenant's flood does not hold another
tenant's job back more than a round, a tenant's jobs beyond its running cap wait and run when earlier ones end,
and a dispatch whose dispatcher died is finished by the reaper. Orders are read from the jobs' records (when each
started and ended), never from wall-clock durations."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import cm3leon_client as api
from cm3leon_client import Client
from cm3leon_client.api import jobs_pb2
from services.dispatch import take
from services.keys import queue_for
from services.presence import live_workers
from services.records import JobRecord, JobState
from services.stack import Stack
from tests.faults.helpers import job_store, wait_for
from tests.faults.test_recovery import _create_unpublished, _record
from tests.serving.fixtures import API_KEYS

pytestmark = pytest.mark.slow


def finals(stack: Stack, client: Client, job_ids: list[str], namespace: str = "") -> list[JobRecord]:
    for job_id in job_ids:
        final = client.wait(job_id, timeout_s=180)
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
    store = job_store(stack, namespace)
    return [store.get(job_id) for job_id in job_ids]


def started_order(records: list[JobRecord]) -> list[str]:
    return [r.job_id for r in sorted(records, key=lambda r: r.started_at or 0.0)]


def test_one_job_of_another_tenant_starts_within_one_round(stack: Stack, client: Client) -> None:
    """Tenant A floods, then B submits one job: B's job starts right after what was already let through for A
    (at most the worker's slots running and as many waiting at the broker), not after A's whole backlog."""
    store = job_store(stack)
    slots = sum(int(info.get("slots", 1)) for info in live_workers(store.client, store.keys).values())
    floods = [client.submit(api.text_to_image(f"a flood {i}", seed=i + 1)).job_id for i in range(2 * slots + 6)]
    with Client(f"127.0.0.1:{stack.gateway_port}", "key-b") as other:
        b_job = other.submit(api.text_to_image("one of b's", seed=9)).job_id
        waiting = [job_id for job_id in floods if store.get(job_id).state == JobState.QUEUED]
        assert len(waiting) >= slots + 3, "A's backlog was still long when B submitted"
        records = finals(stack, client, floods, "") + finals(stack, other, [b_job])
    # Already let through for A: its running jobs and a window of as many at the broker, plus at most one more a
    # claim racing B's submit dispatched for A (B was not in the ring yet); A's other jobs all start after B's.
    assert started_order(records).index(b_job) <= 2 * slots + 1, started_order(records)


@pytest.fixture
def capped(stack: Stack, artifacts: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    """A worker and gateway of their own namespace where each tenant runs one job at a time (a running cap of 1:
    a tenant with nothing running may start one job), with room for 4 jobs at the broker."""
    fair = {"CM3LEON_TENANT_MAX_RUNNING_COST": "1", "CM3LEON_DISPATCH_WINDOW": "4"}
    side = Stack(tmp_path / "capped", namespace="capped", environment={**stack.environment, **fair})
    side.redis_port, side.s3_port = stack.redis_port, stack.s3_port
    memory = tmp_path / "capped" / "qdrant"  # Qdrant local mode: one process per directory
    shutil.copytree(artifacts["CM3LEON_MEMORY_PATH"], memory)
    try:
        side.start_worker("worker", {**artifacts, "CM3LEON_MEMORY_PATH": str(memory)})
        side.start_gateway()
        yield side
    finally:
        side.stop()


def test_jobs_beyond_the_running_cap_wait_and_run_when_earlier_ones_end(capped: Stack) -> None:
    target = f"127.0.0.1:{capped.gateway_port}"
    store = job_store(capped)
    with Client(target, "key-a") as a, Client(target, "key-b") as b:
        a_jobs = [a.submit(api.text_to_image(f"capped {i}", seed=i + 1)).job_id for i in range(3)]
        b_job = b.submit(api.text_to_image("b beside the cap", seed=7)).job_id
        tenant_a, queue = API_KEYS["key-a"], queue_for(capped.namespace, "text_to_image")
        assert store.client.zcard(store.keys.backlog(tenant_a, queue)) == 2, "A's second and third wait"
        assert store.client.hlen(store.keys.active(tenant_a)) == 1
        assert store.client.zcard(store.keys.backlog(API_KEYS["key-b"], queue)) == 0, "B is not held by A's cap"
        records = {r.job_id: r for r in finals(capped, a, a_jobs) + finals(capped, b, [b_job])}
    assert started_order(list(records.values())) == [a_jobs[0], b_job, a_jobs[1], a_jobs[2]]
    for earlier, later in zip(a_jobs, a_jobs[1:], strict=False):
        assert records[later].started_at >= records[earlier].finished_at, "one of A's jobs at a time"
    assert store.client.hlen(store.keys.active(tenant_a)) == 0, "A's running work is released"


def test_a_gateway_killed_mid_dispatch_loses_nothing(stack: Stack, client: Client) -> None:
    """Two jobs stored as a gateway stores them; a dispatcher takes them (outbox marks) and dies before publishing:
    the reaper's outbox sweep publishes them and both run, once each."""
    records = [_record(stack, f"dispatched by the dead {i}") for i in range(2)]
    store = job_store(stack)
    for record in records:
        _create_unpublished(stack, record)
    taken = take(store, stack.settings().model_copy(update={"dispatch_window": 10}))
    assert {r.job_id for r in records} <= set(taken)  # ... and the dispatcher dies here, nothing published
    for record in records:
        final = wait_for(store, record.job_id, lambda r: r.state.finished, timeout_s=120)
        assert final.state == JobState.SUCCEEDED and final.deliveries == 1
    assert store.client.zcard(store.keys.outbox) == 0
