"""Every error a client sees has a documented code and a message with no internals; a cancel that took effect
succeeds even when the broker is down."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis
import redis.asyncio as aioredis
import urllib3
from kombu.exceptions import OperationalError

from cm3leon_client.api import jobs_pb2
from services.interceptors import TENANT, status_of
from services.jobstore import AsyncJobStore
from services.objectstore import ObjectStore
from services.queue import make_celery
from services.servicers import Gateway, JobServicer
from services.settings import GatewaySettings
from services.stack import Stack, free_port
from tests.faults.test_recovery import _record
from tests.serving.fixtures import API_KEYS

INTERNALS = ("127.0.0.1", "Traceback", "Error(", "redis://", "urllib3", "kombu", ":6379")


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), "job store"),
        (OperationalError("Error 111 connecting to redis://127.0.0.1:6379"), "job queue"),
        (urllib3.exceptions.MaxRetryError(None, "/cm3leon/inputs/x.png", ConnectionRefusedError()), "object store"),
        (ConnectionRefusedError(111, "Connection refused"), "backing service"),
    ],
    ids=["redis", "kombu", "urllib3", "socket"],
)
def test_outages_are_unavailable_without_internals(error: Exception, says: str) -> None:
    code, message = status_of(error)
    assert code == grpc.StatusCode.UNAVAILABLE and says in message and "retry later" in message
    assert not any(internal in message for internal in INTERNALS), message


def test_anything_else_is_internal_without_internals() -> None:
    code, message = status_of(KeyError("secret-key-name"))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in message and "KeyError" not in message


@pytest.mark.slow
def test_cancel_succeeds_while_the_broker_is_down(stack: Stack) -> None:
    """The job store answers, the broker does not (the revoke fails): the cancel took effect, so CancelJob
    answers the CANCELLED job instead of an error."""
    quiet = "quiet-cancel"
    TENANT.set(API_KEYS["key-a"])
    settings = GatewaySettings(**{**stack.settings().model_dump(), "namespace": quiet}, api_keys=API_KEYS)
    dead_broker = make_celery(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}))
    record = _record(stack, "cancelled while the broker is down")
    record.queue = f"{quiet}.image"

    async def cancel() -> jobs_pb2.Job:
        client = aioredis.Redis(port=stack.redis_port)
        try:
            store = AsyncJobStore(client, quiet, 3600)
            await store.create(record)
            servicer = JobServicer(Gateway(settings, store, ObjectStore.from_settings(settings), dead_broker))
            return await servicer.CancelJob(jobs_pb2.CancelJobRequest(job_id=record.job_id), None)  # type: ignore[arg-type]
        finally:
            await client.aclose()

    job = asyncio.run(cancel())
    assert job.state == jobs_pb2.JOB_STATE_CANCELLED
