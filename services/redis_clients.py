"""Redis clients of the serving side, all with the same socket timeouts and connection health checks.

One place, so no client can hang forever on a Redis that accepts connections and never answers, or write into a
connection a restarted Redis has dropped.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from services.settings import StackSettings


def connection_options(settings: StackSettings) -> dict[str, float]:
    """The socket timeouts and health checks every client of the serving side connects with."""
    return {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        "health_check_interval": settings.redis_health_check_s,
    }


def redis_client(settings: StackSettings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, **connection_options(settings))


def async_redis_client(settings: StackSettings) -> aioredis.Redis:
    return aioredis.Redis.from_url(settings.redis_url, **connection_options(settings))
