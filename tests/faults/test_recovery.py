"""No accepted job stays QUEUED or RUNNING: the outbox sweeper publishes what a dead gateway did not, the reaper
takes back jobs whose worker stopped renewing their lease, and the worker's time limits fail a slow or hung job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

import cm3leon_client as api
from cm3leon_client import Client
from cm3leon_client.api import jobs_pb2
from services.jobstore import AsyncJobStore
from services.keys import queue_for
from services.queue import RUN_JOB, make_celery
from services.reaper import Reaper
from services.records import JobRecord, JobState, new_job_id
from services.settings import StackSettings
from services.stack import Stack
from tests.faults.helpers import alive, job_store, pool_pids
from tests.serving.fixtures import API_KEYS
from worker.runtime import EXIT_HUNG_JOB

pytestmark = pytest.mark.slow


def _record(stack: Stack, prompt: str, **fields: object) -> JobRecord:
    request = api.text_to_image(prompt, seed=3)
    return JobRecord(
        job_id=new_job_id(),
        tenant=API_KEYS["key-a"],
        kind="text_to_image",
        queue=queue_for(stack.namespace, "text_to_image"),
        request=request.SerializeToString(),
        seed=3,
        **fields,
    )


def _create_unpublished(stack: Stack, record: JobRecord) -> None:
    """What a gateway that died between writing the job and publishing it leaves behind."""

    async def create() -> None:
        client = aioredis.Redis(port=stack.redis_port)
        try:
            await AsyncJobStore(client, stack.namespace, 3600).create(record)
        finally:
            await client.aclose()

    asyncio.run(create())


def test_a_job_its_gateway_never_published_runs(stack: Stack, client: Client) -> None:
    record = _record(stack, "a job left in the outbox")
    _create_unpublished(stack, record)
    final = client.wait(record.job_id, timeout_s=60)
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
    store = job_store(stack)
    assert store.get(record.job_id).deliveries == 1
    assert store.client.zscore(store.keys.outbox, record.job_id) is None


def test_a_second_publish_of_a_job_is_harmless(stack: Stack, client: Client) -> None:
    job = client.submit(api.text_to_image("published twice", seed=4))
    celery = make_celery(stack.settings())
    celery.send_task(RUN_JOB, args=[job.job_id, None], queue=job_queue(stack), task_id=job.job_id)
    final = client.wait(job.job_id, timeout_s=60)
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
    time.sleep(1.0)  # the second message is taken and skipped
    assert job_store(stack).get(job.job_id).deliveries == 1


def job_queue(stack: Stack) -> str:
    return queue_for(stack.namespace, "text_to_image")


# The reaper tests use a namespace no running process reaps, so theirs is the only reaper at work.
QUIET = "quiet"


def _reaper(stack: Stack, published: list[str]) -> Reaper:
    settings = StackSettings(
        **{**stack.settings().model_dump(), "namespace": QUIET, "reaper_interval_s": 0.001, "max_deliveries": 2}
    )
    return Reaper(job_store(stack, QUIET), settings, lambda job_id, queue: published.append(job_id))


def _running_with_expired_lease(stack: Stack, deliveries: int) -> JobRecord:
    store = job_store(stack, QUIET)
    record = _record(stack, "a job whose worker vanished", state=JobState.RUNNING, deliveries=deliveries)
    store.client.set(store.keys.job(record.job_id), record.model_dump_json())
    store.client.zadd(store.keys.leases, {record.job_id: time.time() - 1})
    return record


def test_the_reaper_requeues_a_job_whose_lease_expired(stack: Stack) -> None:
    """(Stands for every way a worker can stop renewing: SIGKILL, a hung process, an exception escaping finish.)"""
    record = _running_with_expired_lease(stack, deliveries=1)
    published: list[str] = []
    time.sleep(0.01)
    _reaper(stack, published).run_once()
    store = job_store(stack, QUIET)
    after = store.get(record.job_id)
    assert after.state == JobState.QUEUED and published == [record.job_id]
    assert store.client.zscore(store.keys.leases, record.job_id) is None
    assert store.client.zscore(store.keys.queued(record.queue), record.job_id) is not None
    store.client.delete(store.keys.job(record.job_id))
    store.client.zrem(store.keys.queued(record.queue), record.job_id)


def test_the_reaper_fails_a_job_past_its_deliveries(stack: Stack) -> None:
    record = _running_with_expired_lease(stack, deliveries=2)
    published: list[str] = []
    time.sleep(0.01)
    _reaper(stack, published).run_once()
    after = job_store(stack, QUIET).get(record.job_id)
    assert after.state == JobState.FAILED and after.error_code == "DEAD_LETTER" and published == []
    assert "stopped responding" in after.error_message


def test_a_killed_worker_is_recovered_through_its_lease(
    stack: Stack, client: Client, artifacts: dict[str, str]
) -> None:
    """The worker process (its job threads with it) is SIGKILLed mid-job; a worker started again runs the job."""
    job = client.submit(api.text_to_image("a job whose worker dies", num_images=2))
    for snapshot in client.watch(job.job_id):
        if snapshot.state == jobs_pb2.JOB_STATE_RUNNING and snapshot.progress.tokens_done > 0:
            break
    pids = pool_pids(stack)
    stack.kill_service("worker")
    assert not any(alive(pid) for pid in pids)
    stack.start_worker("worker", artifacts)
    final = client.wait(job.job_id, timeout_s=120)
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
    assert job_store(stack).get(job.job_id).deliveries == 2


def test_a_job_past_the_soft_time_limit_fails_and_its_worker_goes_on(side_stack: Callable[..., Stack]) -> None:
    """The worker cancels the job at its next check past the soft limit (DEADLINE_EXCEEDED) and stays up."""
    limits = {"CM3LEON_SOFT_TIME_LIMIT_S": "1", "CM3LEON_HARD_TIME_LIMIT_S": "30", "CM3LEON_VISIBILITY_TIMEOUT_S": "60"}
    side = side_stack("slow", {**limits, "CM3LEON_DEBUG_STEP_DELAY_S": "0.05"})
    with Client(f"127.0.0.1:{side.gateway_port}", "key-a") as own:
        job = own.submit(api.text_to_image("a job too slow for its limit", num_images=4))
        final = own.wait(job.job_id, timeout_s=60)
        assert final.state == jobs_pb2.JOB_STATE_FAILED
        assert final.error.code == "DEADLINE_EXCEEDED" and final.error.message == "the job ran past 1 s"
        assert pool_pids(side), "the worker is still up"


def test_a_job_hung_past_the_hard_time_limit_fails(side_stack: Callable[..., Stack]) -> None:
    """A job thread stops answering (a 30 s sleep inside a decode step: as a native call that never returns, no
    cancel check is reached); at the hard limit the worker fails the job and exits, as a thread cannot be stopped."""
    limits = {"CM3LEON_SOFT_TIME_LIMIT_S": "2", "CM3LEON_HARD_TIME_LIMIT_S": "4", "CM3LEON_VISIBILITY_TIMEOUT_S": "60"}
    side = side_stack("hung", {**limits, "CM3LEON_DEBUG_STEP_DELAY_S": "30"})
    [pid] = pool_pids(side)
    with Client(f"127.0.0.1:{side.gateway_port}", "key-a") as own:
        job = own.submit(api.text_to_image("a job that hangs", num_images=4))
        final = own.wait(job.job_id, timeout_s=60)
    assert final.state == jobs_pb2.JOB_STATE_FAILED
    assert final.error.code == "DEADLINE_EXCEEDED" and "hard time limit of 4 s" in final.error.message
    [worker] = [child for child in side.children if child.name == "worker"]
    assert worker.process.wait(30) == EXIT_HUNG_JOB and not alive(pid)


def test_cancel_racing_the_claim_never_leaves_a_job_running(stack: Stack, client: Client) -> None:
    """Each job is cancelled right after submit, racing the worker's claim: every one ends final, and one that
    ended CANCELLED has no outputs."""
    jobs = [client.submit(api.text_to_image(f"cancelled at once {i}", seed=i + 1)) for i in range(6)]
    cancelled = [client.cancel(job.job_id) for job in jobs]
    finals = [client.wait(job.job_id, timeout_s=60) for job in jobs]
    assert all(f.state in (jobs_pb2.JOB_STATE_CANCELLED, jobs_pb2.JOB_STATE_SUCCEEDED) for f in finals), finals
    assert sum(f.state == jobs_pb2.JOB_STATE_CANCELLED for f in finals) >= 1
    for answer, final in zip(cancelled, finals, strict=True):
        if final.state == jobs_pb2.JOB_STATE_CANCELLED:
            assert not final.result.images
        if answer.state == jobs_pb2.JOB_STATE_CANCELLED:
            assert final.state == jobs_pb2.JOB_STATE_CANCELLED, "a cancel that answered CANCELLED holds"


def test_the_reaper_republishes_a_job_queued_long_after_its_publish(stack: Stack) -> None:
    """A worker that reserved a message and died before claiming it took the message along (until the broker's
    visibility timeout): a job still QUEUED `republish_after_s` after its publish is published again."""
    store = job_store(stack, QUIET)
    waiting, gone = _record(stack, "a reserved message lost"), _record(stack, "already running", state=JobState.RUNNING)
    for record in (waiting, gone):
        store.client.set(store.keys.job(record.job_id), record.model_dump_json())
        store.client.zadd(store.keys.published, {record.job_id: time.time() - 400})
    store.client.zadd(store.keys.queued(waiting.queue), {waiting.job_id: waiting.created_at})  # as QUEUED jobs are
    published: list[str] = []
    _reaper(stack, published).run_once()
    assert published == [waiting.job_id]
    assert store.client.zscore(store.keys.published, waiting.job_id) > time.time() - 5
    assert store.client.zscore(store.keys.published, gone.job_id) is None
