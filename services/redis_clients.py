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
    """The gateway's pooled client: at most `redis_max_connections` connections, a caller waits (up to the socket
    timeout) for a free one, so no number of concurrent RPCs makes the gateway open more."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_socket_timeout_s,
        **connection_options(settings),
    )
    return aioredis.Redis.from_pool(pool)


def dedicated_async_client(client: aioredis.Redis) -> aioredis.Redis:
    """A client of one connection, with `client`'s server and socket settings: for a task that blocks on Redis
    (XREAD BLOCK) without taking a connection from the shared pool."""
    pool = client.connection_pool
    own = aioredis.BlockingConnectionPool(
        max_connections=1, connection_class=pool.connection_class, **pool.connection_kwargs
    )
    return aioredis.Redis.from_pool(own)
