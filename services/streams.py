"""Bounds on long-lived RPCs: each tenant may hold only so many open WatchJob streams on one gateway (the rest
are RESOURCE_EXHAUSTED at once), so one client cannot take every Redis connection and RPC slot."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from services.quotas import QuotaExceeded
from services.security_settings import SecuritySettings


class StreamLimiter:
    def __init__(self) -> None:
        self.open: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str, settings: SecuritySettings) -> AsyncIterator[None]:
        """Hold one of the tenant's stream slots for the block; QuotaExceeded when they are all taken."""
        limit = settings.max_watch_streams_per_tenant
        if self.open[tenant] >= limit:
            raise QuotaExceeded(f"you have {limit} WatchJob streams open on this gateway (the limit); close one")
        self.open[tenant] += 1
        try:
            yield
        finally:
            self.open[tenant] -= 1
            if not self.open[tenant]:
                del self.open[tenant]


WATCHES = StreamLimiter()
