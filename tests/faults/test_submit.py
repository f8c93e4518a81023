"""Submission is atomic: one job per request id however many submissions race, and a job whose message the
broker refused is withdrawn with UNAVAILABLE, its request id free for the retry."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from PIL import Image

import cm3leon_client as api
from cm3leon_client import Client
from cm3leon_client.api import jobs_pb2
from services.auth import DEFAULT_SCOPES, PRINCIPAL, Principal
from services.errors import Unavailable
from services.interceptors import TENANT
from services.jobstore import AsyncJobStore
from services.keys import Keys
from services.objectstore import ObjectStore
from services.queue import make_celery
from services.servicers import Gateway, JobServicer
from services.settings import GatewaySettings
from services.stack import Stack, free_port
from tests.serving.fixtures import API_KEYS

pytestmark = pytest.mark.slow


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_eight_racing_submits_with_one_request_id_make_one_job(stack: Stack, client: Client) -> None:
    """Eight clients submit one request id at once; one of them (the first) sends a large inline image the
    gateway must decode and upload before it writes anything: every answer names the same single job."""
    keys = Keys(stack.namespace)
    store = redis.Redis(port=stack.redis_port)
    before = store.zcard(keys.tenant_jobs(API_KEYS["key-a"]))
    request = api.caption(_png(512))

    def submit(_: int) -> jobs_pb2.Job:
        with Client(f"127.0.0.1:{stack.gateway_port}", "key-a") as own:
            return own.submit(request, request_id="race-1")

    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(submit, range(8)))
    assert len({job.job_id for job in jobs}) == 1
    assert store.zcard(keys.tenant_jobs(API_KEYS["key-a"])) == before + 1
    final = client.wait(jobs[0].job_id, timeout_s=120)
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error


def _in_process_gateway(stack: Stack, namespace: str, broker_url: str) -> tuple[JobServicer, AsyncJobStore]:
    settings = GatewaySettings(**{**stack.settings().model_dump(), "namespace": namespace}, api_keys=API_KEYS)
    store = AsyncJobStore(aioredis.Redis(port=stack.redis_port), namespace, settings.job_ttl_s)
    celery = make_celery(settings.model_copy(update={"redis_url": broker_url}))
    return JobServicer(Gateway(settings, store, ObjectStore.from_settings(settings), celery)), store


def test_a_refused_publish_withdraws_the_job_and_frees_its_request_id(stack: Stack) -> None:
    """The broker is unreachable at submit: UNAVAILABLE, no job left behind (not even QUEUED), and the retry the
    documentation asks for, with the same request id, creates a fresh job. (A namespace no reaper serves, so that
    no sweeper publishes the job while the publish fails.)"""
    namespace, tenant = "quiet-submit", API_KEYS["key-a"]
    TENANT.set(tenant)
    PRINCIPAL.set(Principal(tenant, DEFAULT_SCOPES))  # what the auth interceptor sets for a real call
    keys = Keys(namespace)
    request = jobs_pb2.SubmitJobRequest(request=api.text_to_image("a refused publish"), request_id="refused-1")

    async def submit(broker_url: str) -> jobs_pb2.Job:
        servicer, store = _in_process_gateway(stack, namespace, broker_url)
        try:
            return await servicer.SubmitJob(request, None)  # type: ignore[arg-type]
        finally:
            await store.client.aclose()

    sync = redis.Redis(port=stack.redis_port)
    with pytest.raises(Unavailable, match="request_id is free"):
        asyncio.run(submit(f"redis://127.0.0.1:{free_port()}/0"))
    assert sync.get(keys.idempotency(tenant, "refused-1")) is None
    assert sync.zcard(keys.tenant_jobs(tenant)) == 0 and sync.zcard(keys.outbox) == 0
    assert not sync.keys(f"{namespace}:job:*")

    retried = asyncio.run(submit(stack.redis_url))
    assert retried.state == jobs_pb2.JOB_STATE_QUEUED
    assert sync.get(keys.idempotency(tenant, "refused-1")) == retried.job_id.encode()
    assert sync.zcard(keys.tenant_jobs(tenant)) == 1 and sync.zcard(keys.outbox) == 0, "published, mark cleared"
