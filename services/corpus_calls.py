"""Waiting for CorpusService answers: in a pool of its own (never the default executor the object-store calls
use), with a per-tenant cap on calls in flight, so one tenant's slow or unanswered corpus calls cannot hold
every thread of the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError

from services.quotas import QuotaExceeded
from services.security_settings import SecuritySettings

WAIT_THREADS = 16  # corpus calls waited for at once, over all tenants


class CorpusWaits:
    def __init__(self, threads: int = WAIT_THREADS) -> None:
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cm3leon-corpus-wait")
        self.in_flight: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str, settings: SecuritySettings) -> AsyncIterator[None]:
        """One of the tenant's corpus-call slots for the block; QuotaExceeded when they are all taken."""
        limit = settings.max_corpus_calls_per_tenant
        if self.in_flight[tenant] >= limit:
            raise QuotaExceeded(f"you have {limit} corpus calls in flight on this gateway (the limit); retry later")
        self.in_flight[tenant] += 1
        try:
            yield
        finally:
            self.in_flight[tenant] -= 1
            if not self.in_flight[tenant]:
                del self.in_flight[tenant]

    async def result(self, async_result: Any, timeout_s: float) -> Any:
        """`async_result.get(timeout=...)` in the corpus pool; Celery's own TimeoutError (not the builtin one,
        which callers catch) comes out as the builtin."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, lambda: async_result.get(timeout=timeout_s))
        except CeleryTimeoutError as error:
            raise TimeoutError(str(error)) from error


CORPUS_WAITS = CorpusWaits()
