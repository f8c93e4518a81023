"""The watch hub against a real Redis: watchers get exactly the snapshots above their sequence, share one read per
job, leave nothing behind when they end or are cancelled, and the readers' connections are all the hub opens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.errors import NotFound
from services.jobstore import AsyncJobStore, JobStore
from services.keys import Keys
from services.records import JobRecord, JobState, new_job_id
from services.redis_clients import async_redis_client
from services.settings import GatewaySettings, StackSettings
from services.stack import Stack, free_port
from services.watch_hub import MAX_PENDING_SNAPSHOTS, RECHECK, WatchHub

NAMESPACE = "hub"
TENANT = "tenant-a"
STEP_S = 5.0  # a wait that only a bug reaches
POOL = {"redis_max_connections": 4}  # the gateway's pooled client, small


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    stack = Stack(tmp_path_factory.mktemp("hub-redis"), namespace=NAMESPACE)
    try:
        stack.start_redis()
        yield stack.redis_port
    finally:
        stack.stop()


def run(redis_port: int, scenario: Callable[[AsyncJobStore, JobStore], Awaitable[None]], **hub: object) -> None:
    """The scenario with a gateway-side store (the gateway's bounded pool, its own hub) and a worker-side store,
    on one event loop."""

    async def main() -> None:
        client = async_redis_client(StackSettings(redis_url=f"redis://127.0.0.1:{redis_port}/0", **POOL))
        store = AsyncJobStore(client, NAMESPACE, 3600, WatchHub(client, Keys(NAMESPACE), **hub))  # type: ignore[arg-type]
        try:
            await scenario(store, JobStore(redis.Redis(port=redis_port), NAMESPACE, 3600))
            assert store.hub.watched() == (0, 0), "every watcher was unregistered"
        finally:
            await store.aclose()
            await client.aclose()

    asyncio.run(main())


async def new_job(store: AsyncJobStore) -> JobRecord:
    queue = f"{NAMESPACE}.image"
    record = JobRecord(job_id=new_job_id(), tenant=TENANT, kind="text_to_image", queue=queue, request=b"")
    created, _ = await store.create(record)
    return created


def progress(worker: JobStore, job_id: str, tokens: int) -> JobRecord:
    """A progress snapshot, written as the worker writes one."""

    def apply(record: JobRecord) -> bool:
        record.state, record.tokens_done = JobState.RUNNING, tokens
        return True

    updated = worker.update(job_id, apply)
    assert updated is not None
    return updated


def finish(worker: JobStore, job_id: str) -> JobRecord:
    def apply(record: JobRecord) -> bool:
        record.finish(JobState.SUCCEEDED)
        return True

    updated = worker.update(job_id, apply)
    assert updated is not None
    return updated


async def collect(snapshots: AsyncIterator[JobRecord]) -> list[int]:
    return [record.sequence async for record in snapshots]


async def until_watched(store: AsyncJobStore, jobs: int, watchers: int) -> None:
    """Until the hub holds these many jobs and watchers (each watch has read its record and subscribed)."""

    async def poll() -> None:
        while store.hub.watched() != (jobs, watchers):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), STEP_S)


async def sequences(watcher_next: Callable[[], Awaitable[object]], count: int) -> list[int]:
    got = []
    for _ in range(count):
        item = await asyncio.wait_for(watcher_next(), STEP_S)
        assert isinstance(item, JobRecord)
        got.append(item.sequence)
    return got


def test_a_watcher_gets_new_snapshots_and_unsubscribes(redis_port: int) -> None:
    async def scenario(store: AsyncJobStore, worker: JobStore) -> None:
        job = await new_job(store)
        async with store.hub.subscribe(job.job_id, job.sequence) as watcher:
            assert store.hub.watched() == (1, 1)
            progress(worker, job.job_id, 3)
            assert await sequences(watcher.next, 1) == [2]
            finish(worker, job.job_id)
            assert await sequences(watcher.next, 1) == [3]
        assert store.hub.watched() == (0, 0)

    run(redis_port, scenario)


def test_two_watchers_of_one_job_share_its_entry(redis_port: int) -> None:
    async def scenario(store: AsyncJobStore, worker: JobStore) -> None:
        job = await new_job(store)
        async with store.hub.subscribe(job.job_id, 1) as first, store.hub.subscribe(job.job_id, 1) as second:
            assert store.hub.watched() == (1, 2), "one entry for the job, two watchers"
            progress(worker, job.job_id, 1)
            assert await sequences(first.next, 1) == [2]
            assert await sequences(second.next, 1) == [2]
        assert store.hub.watched() == (0, 0)

    run(redis_port, scenario)


def test_a_watcher_resumes_after_its_sequence(redis_port: int) -> None:
    """Snapshots 2..4 are in the stream: a watcher at 2 gets 3 and 4, one at 0 on the same job gets all four."""

    async def scenario(store: AsyncJobStore, worker: JobStore) -> None:
        job = await new_job(store)
        for tokens in (1, 2, 3):
            progress(worker, job.job_id, tokens)
        async with store.hub.subscribe(job.job_id, 2) as resumed:
            assert await sequences(resumed.next, 2) == [3, 4]
            async with store.hub.subscribe(job.job_id, 0) as late:
                assert await sequences(late.next, 4) == [1, 2, 3, 4]
            assert not resumed.pending, "the late watcher's read handed nothing twice"
        finish(worker, job.job_id)
        assert await collect(store.watch(job.job_id, TENANT, 2)) == [5], "the record first, then the stream ends"

    run(redis_port, scenario)


def test_store_watch_keeps_its_semantics(redis_port: int) -> None:
    """From the record on, in order, to the final snapshot; nothing after the final; NOT_FOUND for an unknown job
    and another tenant's alike."""

    async def scenario(store: AsyncJobStore, worker: JobStore) -> None:
        job = await new_job(store)
        watching = asyncio.create_task(collect(store.watch(job.job_id, TENANT, 0)))
        await until_watched(store, 1, 1)  # the watcher has the first snapshot and waits on the hub
        progress(worker, job.job_id, 1)
        progress(worker, job.job_id, 2)
        finish(worker, job.job_id)
        seen = await asyncio.wait_for(watching, STEP_S)
        # A finished job's stream keeps only its final snapshot: snapshots not read before the finish are skipped.
        assert seen[0] == 1 and seen[-1] == 4 and seen == sorted(set(seen)) and set(seen) <= {1, 2, 3, 4}
        assert await collect(store.watch(job.job_id, TENANT, 4)) == []
        assert await collect(store.watch(job.job_id, TENANT, 2)) == [4]
        for job_id, tenant in ((new_job_id(), TENANT), (job.job_id, "tenant-b")):
            with pytest.raises(NotFound):
                await collect(store.watch(job_id, tenant, 0))

    run(redis_port, scenario)


def test_a_watch_of_a_withdrawn_job_ends_not_found(redis_port: int) -> None:
    """The job (record and stream) goes while it is watched: the sweep finds the stream gone, the record is
    re-read, and the watch ends NOT_FOUND."""

    async def scenario(store: AsyncJobStore, worker: JobStore) -> None:
        job = await new_job(store)
        watching = asyncio.create_task(collect(store.watch(job.job_id, TENANT, 0)))
        await until_watched(store, 1, 1)
        assert await store.withdraw(job)
        with pytest.raises(NotFound):
            await asyncio.wait_for(watching, STEP_S)

    run(redis_port, scenario, recheck_s=0.2)


def test_a_missing_stream_is_rechecked_once_until_taken(redis_port: int) -> None:
    async def scenario(store: AsyncJobStore, worker: JobStore) -> None:
        async with store.hub.subscribe(new_job_id(), 0) as watcher:
            assert await asyncio.wait_for(watcher.next(), STEP_S) is RECHECK
            await asyncio.sleep(0.5)  # several sweeps
            assert len(watcher.pending) <= 1, "a pending recheck is not queued again"

    run(redis_port, scenario, recheck_s=0.1)


def test_cancelled_watches_leave_no_subscription(redis_port: int) -> None:
    async def scenario(store: AsyncJobStore, worker: JobStore) -> None:
        jobs = [await new_job(store) for _ in range(3)]
        tasks = [asyncio.create_task(collect(store.watch(job.job_id, TENANT, 0))) for job in jobs for _ in range(2)]
        await until_watched(store, 3, 6)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert store.hub.watched() == (0, 0)

    run(redis_port, scenario)


def test_many_streams_in_chunks_are_read(redis_port: int) -> None:
    """More streams than one read takes: read in pipelined chunks, and each watcher still gets its job's events."""

    async def scenario(store: AsyncJobStore, worker: JobStore) -> None:
        jobs = [await new_job(store) for _ in range(7)]
        tasks = [asyncio.create_task(collect(store.watch(job.job_id, TENANT, 0))) for job in jobs]
        await until_watched(store, len(jobs), len(jobs))
        for job in jobs:
            finish(worker, job.job_id)
        assert await asyncio.wait_for(asyncio.gather(*tasks), STEP_S) == [[1, 2]] * len(jobs)

    run(redis_port, scenario, readers=1, keys_per_read=2, block_ms=50)


def test_the_hub_holds_one_connection_per_reader(redis_port: int) -> None:
    """200 watches opened at once: Redis sees the pool's connections and the hub's readers, not one per watch."""

    async def scenario(store: AsyncJobStore, worker: JobStore) -> None:
        probe = redis.Redis(port=redis_port)
        jobs = [await new_job(store) for _ in range(200)]
        before = probe.info("clients")["connected_clients"]
        tasks = [asyncio.create_task(collect(store.watch(job.job_id, TENANT, 0))) for job in jobs]
        await until_watched(store, 200, 200)
        during = probe.info("clients")["connected_clients"]
        assert during <= before + POOL["redis_max_connections"] + 2, (before, during)
        for job in jobs[:10]:
            finish(worker, job.job_id)
        assert await asyncio.wait_for(asyncio.gather(*tasks[:10]), STEP_S) == [[1, 2]] * 10
        assert not any(task.done() for task in tasks[10:]), "only the finished jobs' watches ended"
        for task in tasks[10:]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        probe.close()

    run(redis_port, scenario, readers=2)


def test_a_reader_that_cannot_reach_redis_fails_its_watchers(tmp_path: Path) -> None:
    """The error reaches the watcher (the RPC ends UNAVAILABLE), and the watcher unregisters. (Without retries:
    the client's own retries only delay it.)"""

    async def main() -> None:
        client = aioredis.Redis(port=free_port(), socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
        hub = WatchHub(client, Keys(NAMESPACE), readers=1)
        try:
            async with hub.subscribe(new_job_id(), 0) as watcher:
                with pytest.raises(redis.ConnectionError):
                    await asyncio.wait_for(watcher.next(), 30)
            assert hub.watched() == (0, 0)
        finally:
            await hub.aclose()
            await client.aclose()

    asyncio.run(main())


def test_a_read_may_not_block_past_the_socket_timeout() -> None:
    with pytest.raises(ValueError, match="watch_block_ms"):
        GatewaySettings(watch_block_ms=5000, redis_socket_timeout_s=5.0)
    assert GatewaySettings(watch_block_ms=250).watch_readers == 2


def test_a_slow_client_costs_its_watcher_a_bounded_number_of_snapshots_the_newest(redis_port: int) -> None:
    """A client that reads nothing while its job writes many snapshots: the watcher holds the newest
    MAX_PENDING_SNAPSHOTS of them, in order; a recheck behind them is never dropped."""

    async def scenario(store: AsyncJobStore, worker: JobStore) -> None:
        job = await new_job(store)
        async with store.hub.subscribe(job.job_id, job.sequence) as watcher:
            last = [progress(worker, job.job_id, tokens).sequence for tokens in range(1, 150)][-1]

            async def read_all() -> None:
                while watcher.cursor < last:
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(read_all(), STEP_S)
            assert len(watcher.pending) == MAX_PENDING_SNAPSHOTS and watcher.dropped > 0
            watcher.recheck()
            newest = list(range(last - MAX_PENDING_SNAPSHOTS + 1, last + 1))
            assert await sequences(watcher.next, MAX_PENDING_SNAPSHOTS) == newest
            assert await asyncio.wait_for(watcher.next(), STEP_S) is RECHECK

    run(redis_port, scenario)
