"""Dependencies going away and coming back: Redis restarted (append-only file), the object store stopped during
input fetch and output upload (retried until the deadline, cancellable meanwhile, a clear failure after it)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from PIL import Image

import cm3leon_client as api
from cm3leon_client import Client
from cm3leon_client.api import jobs_pb2, jobs_pb2_grpc
from cm3leon_client.channel import API_KEY_HEADER
from services.stack import Stack

pytestmark = pytest.mark.slow
FINAL = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)


KEY_A = ((API_KEY_HEADER, "key-a"),)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _until(client: Client, job_id: str, done: Callable[[jobs_pb2.Job], bool], timeout_s: float = 60) -> jobs_pb2.Job:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(job_id)
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {jobs_pb2.JobState.Name(job.state)}"
        time.sleep(0.05)


def _decoded(job: jobs_pb2.Job) -> bool:
    """Running with every token decoded: the worker is uploading the outputs."""
    return job.state == jobs_pb2.JOB_STATE_RUNNING and 0 < job.progress.tokens_total == job.progress.tokens_done


def test_redis_restart_with_jobs_queued_and_running(stack: Stack, client: Client) -> None:
    jobs = [client.submit(api.text_to_image(f"a job across a redis restart {i}", num_images=2)) for i in range(3)]
    _until(client, jobs[0].job_id, lambda job: job.state == jobs_pb2.JOB_STATE_RUNNING)
    stack.stop_service("redis")
    with pytest.raises(grpc.RpcError) as outage:
        client.get(jobs[0].job_id)
    assert outage.value.code() == grpc.StatusCode.UNAVAILABLE, outage.value.details()
    assert "job store is unavailable" in outage.value.details()
    time.sleep(2.0)
    stack.start_redis(same_port=True)
    finals = [client.wait(job.job_id, timeout_s=120) for job in jobs]
    assert [f.state for f in finals] == [jobs_pb2.JOB_STATE_SUCCEEDED] * 3, [f.error for f in finals]


def test_object_store_outage_cancel_during_upload_and_fetch_then_success(
    stack: Stack, side_stack: Callable[..., Stack]
) -> None:
    """A worker of one job thread, so that each job starts its input fetch or upload in the order the test sets
    (with several threads all three would fetch at once, before the outage)."""
    side = side_stack("s3cancel", {"CM3LEON_WORKER_JOBS": "1"})
    with Client(f"127.0.0.1:{side.gateway_port}", "key-a") as client:
        cancel_during_upload_and_fetch(stack, side, client)


def cancel_during_upload_and_fetch(stack: Stack, side: Stack, client: Client) -> None:
    uploading = client.submit(api.text_to_image("cancelled while uploading", num_images=2))
    fetching = client.submit(api.caption(_png()))
    fetched = client.submit(api.caption(_png(), seed=5))
    _until(client, uploading.job_id, lambda job: job.state == jobs_pb2.JOB_STATE_RUNNING)
    stack.stop_service("s3")
    try:
        _until(client, uploading.job_id, _decoded)
        client.cancel(uploading.job_id)
        assert client.wait(uploading.job_id, timeout_s=30).state == jobs_pb2.JOB_STATE_CANCELLED
        _until(client, fetching.job_id, lambda job: job.state == jobs_pb2.JOB_STATE_RUNNING)
        client.cancel(fetching.job_id)
        assert client.wait(fetching.job_id, timeout_s=30).state == jobs_pb2.JOB_STATE_CANCELLED
        _until(client, fetched.job_id, lambda job: job.state == jobs_pb2.JOB_STATE_RUNNING)
        # An inline image cannot be stored now: the gateway's own answer, on a channel without the SDK's retries.
        with grpc.insecure_channel(f"127.0.0.1:{side.gateway_port}", options=[("grpc.enable_retries", 0)]) as raw:
            submit = jobs_pb2_grpc.JobServiceStub(raw).SubmitJob
            with pytest.raises(grpc.RpcError) as refused:
                submit(jobs_pb2.SubmitJobRequest(request=api.caption(_png(), seed=6)), metadata=KEY_A, timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "object store is unavailable" in refused.value.details()
    finally:
        stack.start_s3(same_ports=True)
    final = client.wait(fetched.job_id, timeout_s=60)
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error


def test_object_store_outage_during_upload_is_retried(stack: Stack, client: Client) -> None:
    job = client.submit(api.text_to_image("uploaded after an outage", num_images=2))
    _until(client, job.job_id, lambda j: j.state == jobs_pb2.JOB_STATE_RUNNING)
    stack.stop_service("s3")
    try:
        _until(client, job.job_id, _decoded)
        time.sleep(1.0)
    finally:
        stack.start_s3(same_ports=True)
    final = client.wait(job.job_id, timeout_s=60)
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
    assert len(final.result.images) == 2


def test_object_store_outage_past_the_deadline_fails_clearly(stack: Stack, side_stack: Callable[..., Stack]) -> None:
    side = side_stack("s3deadline", {"CM3LEON_S3_RETRY_DEADLINE_S": "2"})
    with Client(f"127.0.0.1:{side.gateway_port}", "key-a") as own:
        job = own.submit(api.text_to_image("an upload that gives up", num_images=2))
        _until(own, job.job_id, lambda j: j.state == jobs_pb2.JOB_STATE_RUNNING)
        stack.stop_service("s3")
        try:
            final = own.wait(job.job_id, timeout_s=60)
        finally:
            stack.start_s3(same_ports=True)
    assert final.state == jobs_pb2.JOB_STATE_FAILED
    assert final.error.code == "UNAVAILABLE" and "object store was unavailable for 2 s" in final.error.message
