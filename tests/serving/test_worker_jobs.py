"""One worker process serves several jobs at once through real Celery (its threads pool, `CM3LEON_WORKER_JOBS` = 4
here): jobs submitted together are all RUNNING at one time, each keeps its own progress and cancellation, and a
job's outputs are the same whether it ran alone or beside others."""

from __future__ import annotations

import time

import pytest
import redis

import cm3leon_client as api
from cm3leon_client import Client
from cm3leon_client.api import jobs_pb2
from services.jobstore import JobStore
from services.records import JobRecord, JobState
from services.stack import Stack
from tests.serving.conftest import WORKER_JOBS

pytestmark = pytest.mark.slow

SUCCEEDED, CANCELLED = jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_CANCELLED


def store_of(stack: Stack) -> JobStore:
    return JobStore(redis.Redis(port=stack.redis_port), stack.namespace, 3600)


def wait_all_running(store: JobStore, job_ids: list[str], timeout_s: float = 60) -> list[JobRecord]:
    """The jobs' records at a moment when every one of them is RUNNING at once (polled from the job store)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = [store.get(job_id) for job_id in job_ids]
        if all(record is not None and record.state == JobState.RUNNING for record in records):
            return records  # type: ignore[return-value]
        assert not any(r is not None and r.state.finished for r in records), "a job ended before all ran"
        time.sleep(0.02)
    raise TimeoutError(f"never all RUNNING at once: {[store.get(job_id) for job_id in job_ids]}")


def submit_batch(client: Client, prompt: str, count: int) -> list[str]:
    return [client.submit(api.text_to_image(f"{prompt} {i}", num_images=2, seed=i + 1)).job_id for i in range(count)]


def test_a_worker_runs_several_jobs_at_once(stack: Stack, client: Client) -> None:
    store = store_of(stack)
    job_ids = submit_batch(client, "a shape among others", WORKER_JOBS)
    running = wait_all_running(store, job_ids)
    assert {record.deliveries for record in running} == {1}
    finals = [client.wait(job_id, timeout_s=120) for job_id in job_ids]
    assert all(final.state == SUCCEEDED for final in finals), [final.error for final in finals]
    assert all(len(final.result.images) == 2 for final in finals)
    records = [store.get(job_id) for job_id in job_ids]
    latest_start = max(record.started_at for record in records)  # type: ignore[union-attr]
    assert latest_start < min(record.finished_at for record in records), "their runs overlap"  # type: ignore[union-attr]
    # The same job alone draws the same images (one seed, one output, whatever else the worker runs).
    alone = client.wait(client.submit(api.text_to_image("a shape among others 0", num_images=2, seed=1)).job_id)
    assert [image.sha256 for image in alone.result.images] == [image.sha256 for image in finals[0].result.images]


def test_cancelling_one_running_job_leaves_the_others(stack: Stack, client: Client) -> None:
    store = store_of(stack)
    job_ids = submit_batch(client, "one of them is cancelled", WORKER_JOBS)
    wait_all_running(store, job_ids)
    cancelled = job_ids[1]
    client.cancel(cancelled)
    finals = {job_id: client.wait(job_id, timeout_s=120) for job_id in job_ids}
    assert finals[cancelled].state == CANCELLED and finals[cancelled].error.code == "CANCELLED"
    assert not finals[cancelled].result.images
    others = [finals[job_id] for job_id in job_ids if job_id != cancelled]
    assert all(final.state == SUCCEEDED and len(final.result.images) == 2 for final in others), others
    assert all(final.progress.tokens_done == final.progress.tokens_total > 0 for final in others)
