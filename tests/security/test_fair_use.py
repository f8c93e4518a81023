"""Fair use: per-tenant token buckets and queued-work caps, weighted by cost, taken atomically in Redis; one
tenant flooding does not stop another's submits, and a refusal says when to retry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Literal

import grpc
import pytest
import redis
import redis.asyncio as aioredis

import cm3leon_client as api
from cm3leon_client import Client
from services import quotas
from services.cost import job_cost, merged_profile
from services.keys import Keys, queue_for
from services.presence import live_workers
from services.quotas import RETRY_AFTER_HEADER, Admission, QuotaExceeded, quota_keys, run_admission
from services.settings import GatewaySettings
from services.stack import Stack

pytestmark = pytest.mark.slow
# In plain text->image jobs (the stack's model's cost of one).
LIMITS = {"CM3LEON_TENANT_RATE_PER_S": 1, "CM3LEON_TENANT_BURST": 4, "CM3LEON_TENANT_MAX_QUEUED_COST": 6}


class Context:
    """The one ServicerContext call `admit` makes (setting trailing metadata), recorded."""

    def __init__(self) -> None:
        self.trailing: tuple = ()

    def set_trailing_metadata(self, metadata: tuple) -> None:
        self.trailing = metadata


def plain_cost(stack: Stack) -> int:
    """The cost of a plain text->image job on the stack's model (as its worker declared it)."""
    workers = live_workers(redis.Redis(port=stack.redis_port), Keys(stack.namespace))
    return job_cost(api.text_to_image("x"), merged_profile(workers.values()))


def test_a_big_job_costs_more_than_a_small_one(secure_stack: Stack) -> None:
    workers = live_workers(redis.Redis(port=secure_stack.redis_port), Keys(secure_stack.namespace))
    profile = merged_profile(workers.values())
    small = job_cost(api.text_to_image("x"), profile)
    assert job_cost(api.text_to_image("x", num_images=4, num_candidates=4), profile) == 16 * small
    assert job_cost(api.text_to_image("x", method="sample"), profile) * 2 == small, "one stream without guidance"


@pytest.mark.parametrize("step", ["rate", "reserve"])
def test_concurrent_admissions_never_overshoot(secure_stack: Stack, step: Literal["rate", "reserve"]) -> None:
    """50 concurrent admissions against a burst (or a queued cap) of 10: exactly 10 pass, however they interleave."""
    loose = 1000
    burst, cap = (10, loose) if step == "rate" else (loose, 10)
    settings = GatewaySettings(tenant_rate_per_s=0.001, tenant_burst=burst, tenant_max_queued_cost=cap)

    async def race() -> list[bool]:
        client = aioredis.Redis(port=secure_stack.redis_port)

        async def one(index: int) -> bool:
            try:
                admission = Admission(step, settings, f"race-{step}", "t", f"{index:032x}", 1)
                await run_admission(client, admission, Context())
                return True
            except QuotaExceeded:
                return False

        try:
            return await asyncio.gather(*(one(i) for i in range(50)))
        finally:
            await client.aclose()

    assert sum(asyncio.run(race())) == 10


def test_the_queued_cap_frees_as_jobs_leave_the_queue(secure_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reservations are counted by an upper bound (their sum) until it would refuse; then the exact count drops
    the jobs that left the queue, so a tenant whose jobs started may queue again."""
    monkeypatch.setattr(quotas, "RESERVATION_GRACE_MS", 0)  # a reservation counts only while its job is queued
    namespace, settings = "capfree", GatewaySettings(tenant_burst=1000, tenant_max_queued_cost=10)
    queued = Keys(namespace).queued(queue_for(namespace, "text_to_image"))

    async def scenario() -> list[bool]:
        client = aioredis.Redis(port=secure_stack.redis_port)

        async def reserve(job: str, cost: int) -> bool:
            try:
                await run_admission(client, Admission("reserve", settings, namespace, "t", job, cost), Context())
            except QuotaExceeded:
                return False
            await client.zadd(queued, {job: 0})
            return True

        try:
            passed = [await reserve(f"job-{index}", 2) for index in range(6)]  # 5 fit a cap of 10
            await client.zrem(queued, "job-0", "job-1")  # two started
            passed += [await reserve("job-6", 4), await reserve("job-7", 1)]
            held = int(await client.get(quota_keys(namespace, "t")[3]))
            return [*passed, held == 10]
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [True] * 5 + [False] + [True, False, True]


@pytest.fixture(scope="module")
def limited_target(secure_stack: Stack) -> str:
    unit = plain_cost(secure_stack)
    _, port = secure_stack.start_gateway("gateway-limited", env={name: str(n * unit) for name, n in LIMITS.items()})
    return f"127.0.0.1:{port}"


@pytest.fixture()
def flooder(limited_target: str) -> Iterator[Client]:
    with Client(limited_target, "key-a") as client:
        yield client


def test_a_flooding_tenant_does_not_stop_another(limited_target: str, flooder: Client) -> None:
    accepted, refusals = [], []
    for index in range(20):
        try:
            accepted.append(flooder.submit(api.text_to_image(f"flood {index}", seed=index)))
        except grpc.RpcError as error:
            refusals.append(error)
    assert refusals and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refusals)
    assert 1 <= len(accepted) <= 6
    retry_after = dict(refusals[0].trailing_metadata())[RETRY_AFTER_HEADER]
    assert float(retry_after) > 0, "a retry-after hint in seconds"
    with Client(limited_target, "key-b") as other:
        others = [other.submit(api.text_to_image(f"other {index}", seed=index)) for index in range(3)]
        assert all(job.job_id for job in others)
        for job in [*accepted, *others]:
            (flooder if job in accepted else other).cancel(job.job_id)


def test_a_costly_job_takes_its_cost(limited_target: str) -> None:
    with Client(limited_target, "key-admin") as client:
        job = client.submit(api.text_to_image("costly", num_images=2, num_candidates=2, seed=1))  # 4 plain = burst
        with pytest.raises(grpc.RpcError) as raised:
            client.submit(api.text_to_image("cheap", seed=2))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate" in raised.value.details()
        assert float(dict(raised.value.trailing_metadata())[RETRY_AFTER_HEADER]) > 0
        client.cancel(job.job_id)
