"""A submit's Redis work in one script (`services.submission`): the steps run in order, the first refusal stops
it with nothing after it written, and a retry's request id re-attaches before any admission is charged. Real
Redis."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.keys import Keys, queue_for
from services.quotas import Admission, quota_keys
from services.records import JobRecord, new_job_id
from services.settings import GatewaySettings
from services.stack import Stack
from services.submission import Steps, admission_steps, creation_steps, refused

NAMESPACE = "submission"
KEYS = Keys(NAMESPACE)
QUEUE = queue_for(NAMESPACE, "text_to_image")


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    stack = Stack(Path(tmp_path_factory.mktemp("submission-redis")), namespace=NAMESPACE)
    try:
        stack.start_redis()
        yield stack.redis_port
    finally:
        stack.stop()


def run(redis_port: int, scenario: Callable[[aioredis.Redis], Awaitable[object]]) -> object:
    async def main() -> object:
        client = aioredis.Redis(port=redis_port)
        try:
            await client.flushdb()
            return await scenario(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def record(tenant: str = "t", request_id: str = "") -> JobRecord:
    return JobRecord(
        job_id=new_job_id(),
        tenant=tenant,
        kind="text_to_image",
        queue=QUEUE,
        request=b"",
        request_id=request_id,
        fingerprint="f",
        seed=1,
        cost=1,
    )


def submit_steps(job: JobRecord, settings: GatewaySettings, max_queued: int = 100) -> Steps:
    """A whole image-free submit, built as the gateway builds it (a dispatch window of 1)."""
    admission = functools.partial(Admission, settings=settings, namespace=NAMESPACE, tenant=job.tenant)
    rate, reserve = (admission(step, job_id=job.job_id, cost=job.cost) for step in ("rate", "reserve"))
    steps = admission_steps(KEYS, max_queued, job.tenant, job.request_id, rate)
    creation_steps(steps, KEYS, settings, 3600, job, reserve, window=1)
    return steps


def test_a_whole_submit_runs_in_one_call(redis_port: int) -> None:
    settings = GatewaySettings(tenant_burst=10, tenant_max_queued_cost=10)

    async def scenario(client: aioredis.Redis) -> None:
        first, second = record(), record()
        for number, job in enumerate((first, second)):
            replies = await submit_steps(job, settings).run(client)
            assert list(replies) == ["room", "rate", "reserve", "create", "dispatch", "rank"]
            assert int(replies["room"][1]) == number and int(replies["rank"][1]) == number
            assert not any(refused(replies, label) for label in replies)
            dispatched = [raw.decode() for raw in replies["dispatch"][1]]
            assert dispatched == ([first.job_id] if job is first else []), "a window of 1: the first goes out"
        assert await client.zcard(KEYS.queued(QUEUE)) == 2
        assert int(await client.get(quota_keys(NAMESPACE, "t")[3])) == 2, "the held bound: both reservations"

    run(redis_port, scenario)


def test_a_refusal_stops_the_script_with_nothing_after_it_written(redis_port: int) -> None:
    settings = GatewaySettings(tenant_burst=10, tenant_max_queued_cost=10)

    async def scenario(client: aioredis.Redis) -> None:
        full = await submit_steps(record(), settings, max_queued=0).run(client)
        assert list(full) == ["room"] and refused(full, "room")
        assert await client.dbsize() == 0, "no tokens taken, nothing stored"
        poor = GatewaySettings(tenant_rate_per_s=0.001, tenant_burst=1, tenant_max_queued_cost=10)
        costly = record()
        costly.cost = 5  # charged at the burst (1): the first passes, the second is over the rate
        assert not refused(await submit_steps(costly, poor).run(client), "rate")
        over = await submit_steps(record(), poor).run(client)
        assert list(over) == ["room", "rate"] and refused(over, "rate") and int(over["rate"][1]) > 0
        assert await client.zcard(KEYS.queued(QUEUE)) == 1, "the refused job was not created"

    run(redis_port, scenario)


def test_a_retry_re_attaches_before_any_admission(redis_port: int) -> None:
    settings = GatewaySettings(tenant_rate_per_s=0.001, tenant_burst=1, tenant_max_queued_cost=10)

    async def scenario(client: aioredis.Redis) -> None:
        original = record(request_id="r1")
        assert not refused(await submit_steps(original, settings).run(client), "create")
        retry = record(request_id="r1")  # its bucket is empty now: only re-attaching can answer it
        replies = await submit_steps(retry, settings).run(client)
        assert list(replies) == ["existing"] and refused(replies, "existing")
        assert JobRecord.model_validate_json(replies["existing"][1]).job_id == original.job_id

    run(redis_port, scenario)


def test_an_unknown_step_is_refused_before_any_call() -> None:
    with pytest.raises(ValueError, match="no submit step 'publish'"):
        Steps().add("publish", [], [])
