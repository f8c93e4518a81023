"""Worker presence: one Redis hash `{ns}:workers` (name -> what the worker runs and when it was last seen).

Each pool process writes its entry every few seconds; a reader takes the entries seen within `PRESENCE_TTL_S`.
One hash read instead of a scan of the keyspace, whose cost grows with the job history (records live for days).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from services.keys import Keys

# An entry not refreshed for this long is not a live worker; one older than PRUNE_AFTER_S is deleted.
PRESENCE_TTL_S = 30.0
PRUNE_AFTER_S = 10 * PRESENCE_TTL_S


def live(entries: dict[bytes, bytes], now: float | None = None) -> dict[str, dict[str, Any]]:
    """The entries of a presence hash seen within PRESENCE_TTL_S, by worker name."""
    now = time.time() if now is None else now
    infos = {name.decode(): json.loads(raw) for name, raw in entries.items()}
    return {name: info for name, info in infos.items() if info.get("seen", 0) >= now - PRESENCE_TTL_S}


def publish(client: redis.Redis, keys: Keys, name: str, info: dict[str, Any]) -> None:
    """Write this worker's entry (seen now) and delete entries long dead."""
    now = time.time()
    client.hset(keys.workers, name, json.dumps({**info, "seen": now}))
    stale = [
        field
        for field, raw in client.hgetall(keys.workers).items()
        if json.loads(raw).get("seen", 0) < now - PRUNE_AFTER_S
    ]
    if stale:
        client.hdel(keys.workers, *stale)


def live_workers(client: redis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    return live(client.hgetall(keys.workers))


async def live_workers_async(client: aioredis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    return live(await client.hgetall(keys.workers))
