"""A gateway's WatchJob streams read over a few Redis connections, whatever their number.

Each watched job's event stream belongs to one of `readers` reader tasks (by a hash of the job id). A reader holds
one Redis connection of its own and reads all of its streams with one `XREAD BLOCK` (several non-blocking ones in a
pipeline when they are very many), then hands each snapshot to the queues of that job's watchers. Why: a blocking
XREAD per open stream held one pooled connection per stream, and some thousands of streams reached Redis's
`maxclients` and took the broker, and the workers with it, down.

A watcher registers with the job id and the last sequence it has. A job's stream is read after the lowest sequence
any of its watchers has, so several watchers of one job share one read and each gets only the snapshots above its
own. A read blocks at most `block_ms`, so a new watcher's stream is read from within that. A watched stream that no
longer exists (the job was withdrawn, or Redis lost it) is found by a sweep every `recheck_s`, and its watchers are
told to re-read the record. A reader that loses Redis hands the error to every watcher it serves (their streams
end UNAVAILABLE, as one stream's own read used to, and the clients resume) and tries again. A watcher whose client
reads slower than its job changes holds at most MAX_PENDING_SNAPSHOTS snapshots: past that the oldest is dropped
(each snapshot is whole, and a newer one supersedes it), so a slow stream costs the gateway a bounded amount.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from services.keys import Keys
from services.records import JobRecord, decode_record
from services.redis_clients import dedicated_async_client

log = logging.getLogger(__name__)
# Entries read per stream per read (a watcher that resumes far behind is caught up over a few reads).
ENTRIES_PER_READ = 64
# Streams per XREAD command: above this a reader reads its streams in chunks, pipelined, and polls.
KEYS_PER_READ = 1024
# How often a reader looks for watched streams that no longer exist (their watchers re-read the record).
RECHECK_S = 1.0
# After losing Redis a reader waits this long before it reads again.
RETRY_S = 0.5
# Snapshots one watcher holds for a client that reads slower than its job changes (the oldest go first).
MAX_PENDING_SNAPSHOTS = 32
# KEYS: event streams. The 1-based positions of those that do not exist.
MISSING_SCRIPT = """
local missing = {}
for index, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 0 then missing[#missing + 1] = index end
end
return missing
"""


class Recheck:
    """Told to a watcher whose stream is gone: the record is the truth (re-read it)."""


RECHECK = Recheck()
Delivery = JobRecord | Recheck | Exception


@dataclass(eq=False)
class Watcher:
    """One open stream's place in the hub: its job, the highest sequence handed to it, what waits for its client
    (snapshots in order, at most MAX_PENDING_SNAPSHOTS of them, a recheck, a reader's error)."""

    job_id: str
    cursor: int
    pending: deque[Delivery] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    recheck_pending: bool = False
    dropped: int = 0  # snapshots superseded before the client read them

    async def next(self) -> JobRecord | Recheck:
        """The next snapshot above the cursor, or RECHECK; raises the error of a reader that lost Redis."""
        while not self.pending:
            self.arrived.clear()
            await self.arrived.wait()
        item = self.pending.popleft()
        if isinstance(item, Exception):
            raise item
        if isinstance(item, Recheck):
            self.recheck_pending = False
        return item

    def offer(self, record: JobRecord) -> None:
        if record.sequence <= self.cursor:
            return
        self.cursor = record.sequence
        snapshots = [item for item in self.pending if isinstance(item, JobRecord)]
        if len(snapshots) >= MAX_PENDING_SNAPSHOTS:
            self.pending.remove(snapshots[0])
            self.dropped += 1
        self.deliver(record)

    def seen(self, sequence: int) -> None:
        """The watcher has this sequence from elsewhere (the record): nothing at or below it is handed again."""
        self.cursor = max(self.cursor, sequence)

    def recheck(self) -> None:
        if not self.recheck_pending:
            self.recheck_pending = True
            self.deliver(RECHECK)

    def deliver(self, item: Delivery) -> None:
        self.pending.append(item)
        self.arrived.set()


def chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def stream_pairs(reply: Any) -> Iterable[tuple[Any, list]]:
    """(stream name, entries) of an XREAD reply, RESP2 (a list) or RESP3 (a map)."""
    if not reply:
        return ()
    return reply.items() if isinstance(reply, dict) else reply


class Reader:
    """One task and one Redis connection reading the event streams of a share of the watched jobs."""

    def __init__(self, client: aioredis.Redis, keys: Keys, block_ms: int, recheck_s: float, keys_per_read: int) -> None:
        self.client, self.keys = client, keys
        self.block_ms, self.recheck_s, self.keys_per_read = block_ms, recheck_s, keys_per_read
        self.watchers: dict[str, set[Watcher]] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.missing = client.register_script(MISSING_SCRIPT)

    def add(self, watcher: Watcher) -> None:
        self.watchers.setdefault(watcher.job_id, set()).add(watcher)
        self.wake.set()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.run(), name="watch-hub-reader")

    def remove(self, watcher: Watcher) -> None:
        group = self.watchers.get(watcher.job_id)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self.watchers[watcher.job_id]

    async def run(self) -> None:
        """Read until cancelled; idle (no connection in use) while nothing is watched."""
        next_sweep = time.monotonic() + self.recheck_s
        while not self.closing:
            if not self.watchers:
                self.wake.clear()
                await self.wake.wait()
                continue
            try:
                await self.read_once()
                if time.monotonic() >= next_sweep:
                    await self.sweep()
                    next_sweep = time.monotonic() + self.recheck_s
            except Exception as error:
                if self.closing:  # redis-py may turn the cancellation of a blocked read into a connection error
                    return
                log.warning("reading watched job events failed (%s); their streams end, reading again", error)
                self.fail_all(error)
                await asyncio.sleep(RETRY_S)

    def streams(self, job_ids: list[str]) -> dict[str, str]:
        """XREAD's streams argument: each job's stream after the lowest sequence of its watchers."""
        return {self.keys.events(job_id): f"{min(w.cursor for w in self.watchers[job_id])}-0" for job_id in job_ids}

    async def read_once(self) -> None:
        self.wake.clear()
        parts = chunks(list(self.watchers), self.keys_per_read)
        if len(parts) == 1:
            replies = [await self.client.xread(self.streams(parts[0]), count=ENTRIES_PER_READ, block=self.block_ms)]
        else:
            async with self.client.pipeline(transaction=False) as pipe:
                for part in parts:
                    pipe.xread(self.streams(part), count=ENTRIES_PER_READ)
                replies = await pipe.execute()
        names = {self.keys.events(job_id): job_id for part in parts for job_id in part}
        handed = sum(self.dispatch(reply, names) for reply in replies)
        if not handed and len(parts) > 1:  # polling: wait for a new watcher or the next round
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.block_ms / 1000)

    def dispatch(self, reply: Any, names: dict[str, str]) -> int:
        """Hand each entry to the job's watchers that lack it; how many entries were read."""
        read = 0
        for name, entries in stream_pairs(reply):
            group = self.watchers.get(names[name.decode() if isinstance(name, bytes) else name], set())
            for entry_id, fields in entries:
                read += 1
                sequence = int(str(entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])
                if all(w.cursor >= sequence for w in group):
                    continue
                record = decode_record(fields.get(b"record") or fields.get("record"))
                for watcher in list(group) if record is not None else ():
                    watcher.offer(record)
        return read

    async def sweep(self) -> None:
        """Watchers of streams that no longer exist re-read their record."""
        for part in chunks(list(self.watchers), self.keys_per_read):
            missing = await self.missing(keys=[self.keys.events(job_id) for job_id in part])
            for position in missing:
                for watcher in list(self.watchers.get(part[int(position) - 1], ())):
                    watcher.recheck()

    def fail_all(self, error: Exception) -> None:
        """Every watcher of this reader ends with the error (a Redis error is UNAVAILABLE to the client)."""
        for group in self.watchers.values():
            for watcher in group:
                if isinstance(error, redis.RedisError):
                    watcher.deliver(redis.ConnectionError(f"reading the job's events failed: {error}"))
                else:
                    watcher.deliver(RuntimeError(f"reading the job's events failed: {error}"))

    async def aclose(self) -> None:
        self.closing = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.client.aclose()


class WatchHub:
    """The gateway's watched job streams, read by `readers` tasks of one Redis connection each."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        readers: int = 2,
        block_ms: int = 250,
        recheck_s: float = RECHECK_S,
        keys_per_read: int = KEYS_PER_READ,
    ) -> None:
        self.readers = [
            Reader(dedicated_async_client(client), keys, block_ms, recheck_s, keys_per_read) for _ in range(readers)
        ]

    def reader_of(self, job_id: str) -> Reader:
        return self.readers[zlib.crc32(job_id.encode()) % len(self.readers)]

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str, after: int) -> AsyncIterator[Watcher]:
        """A watcher of the job's snapshots above `after` for the block; unregistered however the block ends."""
        watcher = Watcher(job_id, after)
        reader = self.reader_of(job_id)
        reader.add(watcher)
        try:
            yield watcher
        finally:
            reader.remove(watcher)

    def watched(self) -> tuple[int, int]:
        """(watched jobs, open watchers): what the hub holds now."""
        groups = [group for reader in self.readers for group in reader.watchers.values()]
        return len(groups), sum(len(group) for group in groups)

    async def aclose(self) -> None:
        for reader in self.readers:
            await reader.aclose()
