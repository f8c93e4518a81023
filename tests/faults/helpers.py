"""What the fault tests share: the in-process job store of a stack, pool pids, waiting for a state."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import redis

from services.jobstore import JobStore
from services.keys import Keys
from services.presence import live_workers
from services.records import JobRecord
from services.stack import Stack


def job_store(stack: Stack, namespace: str = "") -> JobStore:
    return JobStore(redis.Redis(port=stack.redis_port), namespace or stack.namespace, 3600)


def pool_pids(stack: Stack) -> set[int]:
    """Pids of the live pool processes of the stack's workers (from their heartbeats)."""
    client = redis.Redis(port=stack.redis_port)
    pids = {int(info["pid"]) for info in live_workers(client, Keys(stack.namespace)).values()}
    return {pid for pid in pids if alive(pid)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_for(store: JobStore, job_id: str, done: Callable[[JobRecord], bool], timeout_s: float = 60) -> JobRecord:
    deadline = time.monotonic() + timeout_s
    while True:
        record = store.get(job_id)
        if record is not None and done(record):
            return record
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: {record}")
        time.sleep(0.05)
