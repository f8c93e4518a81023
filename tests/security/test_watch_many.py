"""2,000 open WatchJob streams on one gateway (real gateway process, real Redis, gRPC over loopback): Redis sees a
bounded number of connections, health answers within the issue's 1 s, and finishing some jobs (written as the
worker writes them) ends exactly their watchers' streams with the final snapshot.

No worker serves the gateway's namespace: the jobs stay queued, so every stream stays open until the test ends it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cm3leon_client.api import jobs_pb2, jobs_pb2_grpc
from cm3leon_client.channel import API_KEY_HEADER
from services.auth import keys_file_env
from services.jobstore import AsyncJobStore, JobStore
from services.records import JobRecord, JobState, new_job_id
from services.stack import Stack

pytestmark = pytest.mark.slow
NAMESPACE = "many"
KEY, TENANT = "key-bulk", "tenant-bulk"  # tests/security/conftest.py's keys
JOBS, WATCHERS_PER_JOB = 1000, 2  # 2,000 streams; two watchers share each job's entry in the hub
FINISHED = 50  # jobs finished while the streams are open
CHANNELS, BATCH = 8, 200  # streams spread over channels, opened in batches
POOL, READERS = 4, 2
CONNECTION_MARGIN = 10  # the "bounded": the pool and the readers fit well within it
HEALTH_DEADLINE_S = 1.0  # the bound, as the probe's deadline
PHASE_S = 60.0  # a phase that takes this long has hung


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, keys_file: Path) -> Iterator[Stack]:
    """Redis, S3 and a gateway whose limits let one tenant hold 2,000 streams; a small pool and two readers."""
    stack = Stack(tmp_path_factory.mktemp("watch-many"), namespace=NAMESPACE, environment=keys_file_env(keys_file))
    env = {
        "CM3LEON_MAX_WATCH_STREAMS_PER_TENANT": str(JOBS * WATCHERS_PER_JOB + 100),
        "CM3LEON_MAX_CONCURRENT_RPCS": str(JOBS * WATCHERS_PER_JOB + 200),
        "CM3LEON_REDIS_MAX_CONNECTIONS": str(POOL),
        "CM3LEON_WATCH_READERS": str(READERS),
        "CM3LEON_OUTBOX_AGE_S": "3600",  # the jobs are written here, not submitted: the reaper leaves them be
        "CM3LEON_API_KEYS_RELOAD_S": "60",
    }
    try:
        stack.start_redis()
        stack.start_s3()
        stack.start_gateway(env=env)
        yield stack
    finally:
        stack.stop()


@dataclass
class Stream:
    """One open WatchJob call and what it received."""

    job_id: str
    call: grpc.aio.UnaryStreamCall
    received: list[jobs_pb2.Job] = field(default_factory=list)
    first: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def consume(self) -> None:
        async for job in self.call:
            self.received.append(job)
            self.first.set()


async def create_jobs(redis_port: int) -> list[str]:
    """Queued jobs, written by the job store's create (as SubmitJob writes them)."""
    client = aioredis.Redis(port=redis_port)
    try:
        store = AsyncJobStore(client, NAMESPACE, 3600)
        records = [
            JobRecord(job_id=new_job_id(), tenant=TENANT, kind="text_to_image", queue=f"{NAMESPACE}.image", request=b"")
            for _ in range(JOBS)
        ]
        for record in records:
            await store.create(record)
        return [record.job_id for record in records]
    finally:
        await client.aclose()


def finish(worker: JobStore, job_id: str) -> None:
    """The terminal state, written as the worker's `finish` writes it."""

    def apply(record: JobRecord) -> bool:
        record.finish(JobState.SUCCEEDED)
        return True

    assert worker.update(job_id, apply) is not None


async def health_latency(channel: grpc.aio.Channel) -> float:
    started = time.monotonic()
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return time.monotonic() - started


def connected(probe: redis.Redis) -> int:
    return int(probe.info("clients")["connected_clients"])


async def scenario(stack: Stack) -> dict[str, float]:
    job_ids = await create_jobs(stack.redis_port)
    target = f"127.0.0.1:{stack.gateway_port}"
    probe = redis.Redis(port=stack.redis_port)
    worker = JobStore(redis.Redis(port=stack.redis_port), NAMESPACE, 3600)
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
    health_channel = grpc.aio.insecure_channel(target)
    metadata = ((API_KEY_HEADER, KEY),)
    streams: list[Stream] = []
    try:
        await health_latency(health_channel)  # the gateway has served a call: its pool is in the baseline
        baseline = peak = connected(probe)
        wanted = [job_id for job_id in job_ids for _ in range(WATCHERS_PER_JOB)]
        for start in range(0, len(wanted), BATCH):
            batch = []
            for index, job_id in enumerate(wanted[start : start + BATCH], start):
                stub = jobs_pb2_grpc.JobServiceStub(channels[index % CHANNELS])
                stream = Stream(job_id, stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), metadata=metadata))
                stream.task = asyncio.create_task(stream.consume())
                batch.append(stream)
            await asyncio.wait_for(asyncio.gather(*(s.first.wait() for s in batch)), PHASE_S)
            streams += batch
            peak = max(peak, connected(probe))
        assert all(len(s.received) == 1 and s.received[0].sequence == 1 for s in streams)
        latencies = [await health_latency(health_channel) for _ in range(5)]  # the deadline is the assertion
        peak = max(peak, connected(probe))
        assert peak <= baseline + CONNECTION_MARGIN, f"{peak} Redis clients with 2,000 streams (baseline {baseline})"

        finished = set(job_ids[:FINISHED])
        for job_id in finished:
            finish(worker, job_id)
        ending = [s for s in streams if s.job_id in finished]
        await asyncio.wait_for(asyncio.gather(*(s.task for s in ending if s.task)), PHASE_S)
        for stream in ending:
            assert [job.state for job in stream.received] == [jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_SUCCEEDED]
            assert await stream.call.code() == grpc.StatusCode.OK
        await asyncio.sleep(1.0)  # what else the finishes would have sent has arrived by now
        others = [s for s in streams if s.job_id not in finished]
        assert all(len(s.received) == 1 and s.task and not s.task.done() for s in others), "only their watchers"
        latencies.append(await health_latency(health_channel))
        return {"baseline": baseline, "peak": peak, "health_max_s": max(latencies)}
    finally:
        for stream in streams:
            stream.call.cancel()
        await asyncio.gather(*(s.task for s in streams if s.task), return_exceptions=True)
        for channel in [*channels, health_channel]:
            await channel.close()
        probe.close()
        worker.client.close()


def test_two_thousand_streams_keep_redis_connections_bounded_and_health_answering(gateway: Stack) -> None:
    result = asyncio.run(scenario(gateway))
    print(f"2,000 WatchJob streams: {result}")
