"""The Redis job store: records (with a TTL once finished), per-tenant indexes, queued sets, event streams.

    {ns}:job:{id}            the JobRecord as JSON
    {ns}:job:{id}:events     stream of full snapshots, entry id "{sequence}-0" (WatchJob resumes after one)
    {ns}:job:{id}:cancel     cancellation flag, read by the worker between decode steps
    {ns}:idem:{sha}          idempotency key -> job id
    {ns}:tenant:{sha}:jobs   sorted set of the tenant's job ids by creation time (ListJobs)
    {ns}:queued:{queue}      sorted set of queued job ids by creation time (positions, backpressure)
    {ns}:leases              sorted set of running job ids by when their lease expires (services.reaper)
    {ns}:backlog:{queue}:{sha}  sorted set of a tenant's jobs not yet dispatched, by creation time (services.dispatch)
    {ns}:active:{sha}        hash of a tenant's dispatched, unfinished job ids -> cost (its running work)
    {ns}:dispatch:*          per queue the dispatcher's ring of tenants and turn counter; each unfinished job's cost
    {ns}:outbox              sorted set of job ids dispatched but not yet published to the broker, by when
    {ns}:published           sorted set of queued job ids by when their message was last published

A new job (idempotency key, record, first event, indexes and backlog entry) is written by one Lua script, so two
submissions with one request id can never both create a job, and a queued job is always in its tenant's backlog
or in the outbox: the dispatcher moves it from one to the other atomically (`services.dispatch`), the publisher
clears the outbox mark once the broker has the message, and `services.reaper` dispatches and publishes what a
dead process left.

Every change is one optimistic transaction (WATCH the record, write record + snapshot event together), so the
gateway (cancel) and the worker (progress, results) never overwrite each other's changes. `AsyncJobStore` is the
gateway's (redis.asyncio), `JobStore` the worker's (plain redis): same keys, same transaction helper.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from services import presence
from services.errors import AlreadyExists, InvalidArgument, NotFound
from services.keys import EVENTS_MAXLEN, Keys, tenant_hash
from services.records import JobRecord, JobState, decode_record
from services.watch_hub import Recheck, WatchHub

# How long a finished job's event stream (its final snapshot) stays for a WatchJob that resumes late.
FINISHED_EVENTS_TTL_S = 300

Mutation = Callable[[JobRecord], bool]  # changes the record in place; False: nothing to write
# Further writes of one change, inside its transaction (a lease, an outbox mark).
AlsoWrite = Callable[[redis.client.Pipeline, JobRecord], None]

# KEYS: idempotency (or unused), job, events, tenant jobs, queued, backlog, ring, turn, costs.
# ARGV: job id, record JSON, created_at, ttl, sequence, has request id, now (unused), job key prefix, events maxlen,
#       cost, tenant hash.
# Returns {1} when created, {0, existing record JSON} when the request id already names a live job.
# A new job waits in its tenant's backlog; a tenant not yet in the dispatch ring joins it just before the last
# turn served (just after it, when it is the tenant served last), so it is served within one round
# (`services.dispatch`).
CREATE_SCRIPT = """
if ARGV[6] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then
    local raw = redis.call('GET', ARGV[8] .. existing)
    if raw then return {0, raw} end
  end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], ARGV[5] .. '-0', 'record', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
local turn = redis.call('HMGET', KEYS[8], 'n', 'last')
local place = tonumber(turn[1] or 0) - 0.5
if turn[2] == ARGV[11] then place = place + 1 end
redis.call('ZADD', KEYS[7], 'NX', place, ARGV[11])
redis.call('HSET', KEYS[9], ARGV[1], ARGV[10])
return {1}
"""
# KEYS: job, events, tenant jobs, queued, outbox, idempotency (or unused), backlog, active, costs.
# ARGV: job id, has request id.
# Removes a job whose message was never published (still in its tenant's backlog, or dispatched with its outbox
# mark still set); 1 when it was removed.
WITHDRAW_SCRIPT = """
local waiting = redis.call('ZREM', KEYS[7], ARGV[1])
if redis.call('ZREM', KEYS[5], ARGV[1]) == 0 and waiting == 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[8], ARGV[1])
redis.call('HDEL', KEYS[9], ARGV[1])
if ARGV[2] == '1' and redis.call('GET', KEYS[6]) == ARGV[1] then redis.call('DEL', KEYS[6]) end
return 1
"""


def create_call(keys: Keys, record: JobRecord, ttl_s: int, now: float | None = None) -> tuple[list[str], list[Any]]:
    """CREATE_SCRIPT's keys and arguments for a new job."""
    idem = keys.idempotency(record.tenant, record.request_id) if record.request_id else keys.outbox
    job_keys = [idem, keys.job(record.job_id), keys.events(record.job_id)]
    job_keys += [keys.tenant_jobs(record.tenant), keys.queued(record.queue)]
    job_keys += [keys.backlog(record.tenant, record.queue), keys.ring(record.queue), keys.turn(record.queue)]
    job_keys += [keys.costs]
    arguments: list[Any] = [record.job_id, encode_record(record), record.created_at, ttl_s, record.sequence]
    arguments += ["1" if record.request_id else "0", now or time.time(), keys.job(""), EVENTS_MAXLEN]
    arguments += [max(1, record.cost), tenant_hash(record.tenant)]
    return job_keys, arguments


def created_job(record: JobRecord, reply: Sequence[Any]) -> tuple[JobRecord, bool]:
    """CREATE_SCRIPT's reply -> (the job, whether it is new); ALREADY_EXISTS when the request id names a job
    whose payload differs."""
    if int(reply[0]) == 1:
        return record, True
    found = decode_record(reply[1])
    assert found is not None
    return same_request(found, record.fingerprint, record.request_id), False


def same_request(found: JobRecord, fingerprint: str, request_id: str) -> JobRecord:
    """The job a request id names, when the new request is the one it was created with; else ALREADY_EXISTS."""
    if found.fingerprint != fingerprint:
        raise AlreadyExists(f"request_id {request_id!r} was used for another request (job {found.job_id})")
    return found


def encode_record(record: JobRecord) -> str:
    return record.model_dump_json()


def queue_writes(
    pipe: redis.client.Pipeline | aioredis.client.Pipeline, keys: Keys, record: JobRecord, ttl: int
) -> None:
    """The writes of one change: record, snapshot event, and on a final state the TTLs and index removals."""
    data = encode_record(record)
    pipe.set(keys.job(record.job_id), data)
    pipe.xadd(keys.events(record.job_id), {"record": data}, id=f"{record.sequence}-0", maxlen=EVENTS_MAXLEN)
    if record.state == JobState.QUEUED:
        pipe.zadd(keys.queued(record.queue), {record.job_id: record.created_at})
    else:
        pipe.zrem(keys.queued(record.queue), record.job_id)
        pipe.zrem(keys.published, record.job_id)
    if record.state != JobState.RUNNING:
        pipe.zrem(keys.leases, record.job_id)
    if record.state.finished:
        for key in (keys.job(record.job_id), keys.cancel(record.job_id)):
            pipe.expire(key, ttl)
        # The stream only serves WatchJob's resumes: once final, its last snapshot is all a watcher needs, and not
        # for long (the record, kept `ttl`, answers after), so a job's progress snapshots cost Redis nothing later.
        pipe.xtrim(keys.events(record.job_id), maxlen=1, approximate=False)  # exact: "~" keeps whole nodes
        pipe.expire(keys.events(record.job_id), min(ttl, FINISHED_EVENTS_TTL_S))
        release_dispatch(pipe, keys, record)


def release_dispatch(pipe: redis.client.Pipeline | aioredis.client.Pipeline, keys: Keys, record: JobRecord) -> None:
    """A finished job leaves the dispatcher's books: its backlog entry (cancelled before dispatch), its outbox mark,
    its cost and its share of the tenant's running work (`services.dispatch`)."""
    pipe.zrem(keys.backlog(record.tenant, record.queue), record.job_id)
    pipe.zrem(keys.outbox, record.job_id)
    pipe.hdel(keys.active(record.tenant), record.job_id)
    pipe.hdel(keys.costs, record.job_id)


# KEYS: outbox, published, queued. ARGV: job id, now.
# The job's message is with the broker: out of the outbox, and into the published set while the job is still queued
# (a job its worker claimed or finished first must not hold a place in the dispatcher's window).
MARK_PUBLISHED_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) end
return 1
"""


def mark_published_call(keys: Keys, job_id: str, queue: str) -> list[str | float]:
    """The arguments of MARK_PUBLISHED_SCRIPT's EVAL for one job."""
    return [MARK_PUBLISHED_SCRIPT, 3, keys.outbox, keys.published, keys.queued(queue), job_id, time.time()]


class JobStore:
    """The worker's side (synchronous)."""

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: int) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.ttl_s = ttl_s

    def get(self, job_id: str) -> JobRecord | None:
        return decode_record(self.client.get(self.keys.job(job_id)))

    def update(self, job_id: str, mutate: Mutation, also: AlsoWrite | None = None) -> JobRecord | None:
        """Apply `mutate` atomically (with `also`'s writes); the record after it (None when the job does not
        exist)."""
        key = self.keys.job(job_id)

        def change(pipe: redis.client.Pipeline) -> JobRecord | None:
            record = decode_record(pipe.get(key))
            if record is None or not mutate(record):
                return record
            record.sequence += 1
            pipe.multi()
            queue_writes(pipe, self.keys, record, self.ttl_s)
            if also is not None:
                also(pipe, record)
            return record

        return self.client.transaction(change, key, value_from_callable=True)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.client.exists(self.keys.cancel(job_id)))

    def mark_published(self, job_id: str, queue: str) -> None:
        self.client.eval(*mark_published_call(self.keys, job_id, queue))

    def lease_expiry(self, job_id: str) -> float | None:
        return self.client.zscore(self.keys.leases, job_id)

    def renew_lease(self, job_id: str, ttl_s: float) -> None:
        """Push the lease of a job this worker runs forward (never re-creates a lease the job no longer has)."""
        self.renew_leases([job_id], ttl_s)

    def renew_leases(self, job_ids: list[str], ttl_s: float) -> None:
        """Push the leases of the jobs this worker runs forward, in one call (none is re-created)."""
        if job_ids:
            expiry = time.time() + ttl_s
            self.client.zadd(self.keys.leases, dict.fromkeys(job_ids, expiry), xx=True)

    def publish_worker(self, name: str, info: dict) -> None:
        presence.publish(self.client, self.keys, name, info)

    def dead_letter(self, job_id: str) -> None:
        self.client.rpush(self.keys.dead_letter, job_id)


class AsyncJobStore:
    """The gateway's side (asyncio). Watchers of job events share the hub's few connections (services.watch_hub)."""

    def __init__(self, client: aioredis.Redis, namespace: str, ttl_s: int, hub: WatchHub | None = None) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.ttl_s = ttl_s
        self.hub = hub or WatchHub(client, self.keys)

    async def aclose(self) -> None:
        """Stop the hub's readers and close their connections (the shared client is its owner's to close)."""
        await self.hub.aclose()

    async def get(self, job_id: str, tenant: str) -> JobRecord:
        """The tenant's job; NotFound for an unknown id and for another tenant's job alike."""
        record = decode_record(await self.client.get(self.keys.job(job_id)))
        if record is None or record.tenant != tenant:
            raise NotFound(f"job {job_id!r} not found")
        return record

    async def queue_position(self, record: JobRecord) -> int:
        if record.state != JobState.QUEUED:
            return 0
        rank = await self.client.zrank(self.keys.queued(record.queue), record.job_id)
        return rank + 1 if rank is not None else 0

    async def existing(self, tenant: str, request_id: str, fingerprint: str) -> JobRecord | None:
        """The job an earlier submission with this request id created (ALREADY_EXISTS if its payload differs)."""
        job_id = await self.client.get(self.keys.idempotency(tenant, request_id))
        if job_id is None:
            return None
        record = decode_record(await self.client.get(self.keys.job(job_id.decode())))
        return None if record is None else same_request(record, fingerprint, request_id)

    async def create(self, record: JobRecord, now: float | None = None) -> tuple[JobRecord, bool]:
        """Store a new QUEUED job in its tenant's backlog (with its cost for the dispatcher), atomically; with a
        request id that already names a job, that job is returned instead: (job, created). ALREADY_EXISTS when that
        job's payload differs."""
        job_keys, arguments = create_call(self.keys, record, self.ttl_s, now)
        return created_job(record, await self.client.eval(CREATE_SCRIPT, len(job_keys), *job_keys, *arguments))

    async def mark_published(self, job_id: str, queue: str) -> None:
        await self.client.eval(*mark_published_call(self.keys, job_id, queue))

    async def withdraw(self, record: JobRecord) -> bool:
        """Remove a job whose message could not be published (and free its request id); False when the job had
        been published meanwhile (by the outbox sweeper): it stays."""
        keys = self.keys
        idem = keys.idempotency(record.tenant, record.request_id) if record.request_id else keys.outbox
        job_keys = [keys.job(record.job_id), keys.events(record.job_id), keys.tenant_jobs(record.tenant)]
        job_keys += [keys.queued(record.queue), keys.outbox, idem]
        job_keys += [keys.backlog(record.tenant, record.queue), keys.active(record.tenant), keys.costs]
        reply = await self.client.eval(
            WITHDRAW_SCRIPT, len(job_keys), *job_keys, record.job_id, "1" if record.request_id else "0"
        )
        return int(reply) == 1

    async def update(self, job_id: str, mutate: Mutation) -> JobRecord | None:
        key = self.keys.job(job_id)

        async def change(pipe: aioredis.client.Pipeline) -> JobRecord | None:
            record = decode_record(await pipe.get(key))
            if record is None or not mutate(record):
                return record
            record.sequence += 1
            pipe.multi()
            queue_writes(pipe, self.keys, record, self.ttl_s)
            return record

        return await self.client.transaction(change, key, value_from_callable=True)

    async def cancel(self, job_id: str, tenant: str) -> JobRecord:
        """Flag the job for cancellation; a queued job ends CANCELLED at once, a running one when its worker
        next checks (between decode steps)."""
        record = await self.get(job_id, tenant)
        if record.state.finished:
            return record
        await self.client.set(self.keys.cancel(job_id), "1", ex=self.ttl_s)

        def cancel_if_queued(current: JobRecord) -> bool:
            if current.state != JobState.QUEUED:
                return False
            current.finish(JobState.CANCELLED, "CANCELLED", "cancelled while queued")
            return True

        return await self.update(job_id, cancel_if_queued) or record

    async def watch(self, job_id: str, tenant: str, after: int) -> AsyncIterator[JobRecord]:
        """Snapshots with a sequence above `after`, in order, until a finished one has been yielded. The events
        come from the hub; when the stream is gone the record is the truth (NotFound once the job is)."""
        record = await self.get(job_id, tenant)
        last = after
        if record.sequence > last:
            last = record.sequence
            yield record
        if record.state.finished:
            return
        async with self.hub.subscribe(job_id, last) as watcher:
            while not record.state.finished:
                delivery = await watcher.next()
                snapshot = await self.get(job_id, tenant) if isinstance(delivery, Recheck) else delivery
                if snapshot.sequence > last:
                    record, last = snapshot, snapshot.sequence
                    watcher.seen(last)
                    yield record

    async def list(
        self, tenant: str, states: Sequence[JobState], page_size: int, page_token: str
    ) -> tuple[list[JobRecord], str]:
        """The tenant's jobs newest first, filtered by state; the token resumes after the page's last job."""
        key = self.keys.tenant_jobs(tenant)
        max_score, after_id = decode_page_token(page_token)
        page: list[JobRecord] = []
        while len(page) < page_size:
            batch = await self.client.zrevrangebyscore(
                key, max_score, "-inf", start=0, num=page_size * 2, withscores=True
            )
            batch = [(m.decode(), s) for m, s in batch if not (s == max_score and after_id and m.decode() >= after_id)]
            if not batch:
                return page, ""
            raws = await self.client.mget([self.keys.job(job_id) for job_id, _ in batch])
            for (job_id, score), raw in zip(batch, raws, strict=True):
                max_score, after_id = score, job_id
                record = decode_record(raw)
                if record is None:  # expired: drop it from the index
                    await self.client.zrem(key, job_id)
                elif not states or record.state in states:
                    page.append(record)
                    if len(page) == page_size:
                        break
        return page, encode_page_token(max_score, after_id)


def encode_page_token(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([score, job_id]).encode()).decode()


def decode_page_token(token: str) -> tuple[float | str, str]:
    if not token:
        return "+inf", ""
    try:
        score, job_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return float(score), str(job_id)
    except (ValueError, TypeError) as error:
        raise InvalidArgument("page_token", "not a token from an earlier ListJobs response") from error
