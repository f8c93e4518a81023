"""Fair use: a per-tenant token bucket (rate and burst) and a per-tenant cap on queued work, both weighted by a
job's cost (its decoded tokens, `services.cost`), checked and taken in one Redis script so concurrent submits
cannot overshoot.
A refusal is RESOURCE_EXHAUSTED with a `retry-after` (seconds) in the trailing metadata.

    {ns}:quota:{tenant sha}:bucket    hash: tokens, at (ms)
    {ns}:quota:{tenant sha}:queued    sorted set: job id -> reservation time (ms); costs in ...:costs
    {ns}:quota:{tenant sha}:costs     hash: job id -> cost

Two steps, each one atomic script: `admit` (before any decoding: the queued cap is checked and the job's cost
taken from the bucket) and `reserve` (right before the job is stored: the cap checked again and the cost
reserved). A reservation counts while its job is in one of the queued sets, or for a short grace while the job
is being stored; jobs that left the queue are dropped from the tenant's set at its next admission. A request
refused between the two (a bad image) costs its tokens but holds no queued allowance. The cap on running work is
the dispatcher's (`services.dispatch`).
"""

from __future__ import annotations

import math

import grpc
import redis.asyncio as aioredis

from services.errors import ServiceError
from services.keys import queue_names, tenant_hash
from services.security_settings import SecuritySettings

RETRY_AFTER_HEADER = "retry-after"
RESERVATION_GRACE_MS = 10_000  # a reserved job not yet in a queued set still counts this long
ADMIT = """
local bucket, queued, costs = KEYS[1], KEYS[2], KEYS[3]
local rate, burst, cap, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local job, grace, step = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local held = 0
local members = redis.call('ZRANGE', queued, 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local id, reserved = members[i], tonumber(members[i + 1])
  local waiting = now - reserved < grace
  for q = 4, #KEYS do
    if not waiting and redis.call('ZSCORE', KEYS[q], id) then waiting = true end
  end
  if waiting then
    held = held + tonumber(redis.call('HGET', costs, id) or 1)
  else
    redis.call('ZREM', queued, id)
    redis.call('HDEL', costs, id)
  end
end
if held + cost > cap then
  return {0, -1}
end
if step == 'reserve' then
  redis.call('ZADD', queued, now, job)
  redis.call('HSET', costs, job, cost)
  redis.call('PEXPIRE', queued, 86400000)
  redis.call('PEXPIRE', costs, 86400000)
  return {1, 0}
end
local tokens = tonumber(redis.call('HGET', bucket, 'tokens') or burst)
local at = tonumber(redis.call('HGET', bucket, 'at') or now)
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
if tokens < cost then
  redis.call('HSET', bucket, 'tokens', tostring(tokens), 'at', now)
  return {0, math.ceil((cost - tokens) * 1000 / rate)}
end
redis.call('HSET', bucket, 'tokens', tostring(tokens - cost), 'at', now)
redis.call('PEXPIRE', bucket, math.ceil(burst * 1000 / rate) + 60000)
return {1, 0}
"""


class QuotaExceeded(ServiceError):
    code = "RESOURCE_EXHAUSTED"


def quota_keys(namespace: str, tenant: str) -> list[str]:
    prefix = f"{namespace}:quota:{tenant_hash(tenant)}"
    return [f"{prefix}:bucket", f"{prefix}:queued", f"{prefix}:costs"]


async def run_step(
    step: str,
    client: aioredis.Redis,
    settings: SecuritySettings,
    namespace: str,
    tenant: str,
    job_id: str,
    cost: int,
    context: grpc.aio.ServicerContext,
) -> None:
    cost = min(max(1, cost), settings.tenant_burst, settings.tenant_max_queued_cost)
    queued_sets = [f"{namespace}:queued:{queue}" for queue in queue_names(namespace).values()]
    limits = [settings.tenant_rate_per_s, settings.tenant_burst, settings.tenant_max_queued_cost]
    script = client.register_script(ADMIT)
    admitted, retry_ms = await script(
        keys=[*quota_keys(namespace, tenant), *queued_sets], args=[*limits, cost, job_id, RESERVATION_GRACE_MS, step]
    )
    if admitted:
        return
    if retry_ms < 0:
        retry_s = float(settings.tenant_queued_retry_s)
        reason = f"your queued work is at its limit (cost {settings.tenant_max_queued_cost}; this job costs {cost})"
    else:
        retry_s = math.ceil(retry_ms / 100) / 10
        rate = f"{settings.tenant_rate_per_s:g}"
        reason = f"your submit rate is over its limit (cost {rate} per second; this job costs {cost})"
    context.set_trailing_metadata(((RETRY_AFTER_HEADER, f"{retry_s:g}"),))
    raise QuotaExceeded(f"{reason}; retry after {retry_s:g} s")


async def admit(
    client: aioredis.Redis,
    settings: SecuritySettings,
    namespace: str,
    tenant: str,
    job_id: str,
    cost: int,
    context: grpc.aio.ServicerContext,
) -> None:
    """Before any work on the request: the tenant's queued cap checked and the job's cost taken from its bucket,
    or QuotaExceeded (with the retry-after trailer)."""
    await run_step("rate", client, settings, namespace, tenant, job_id, cost, context)


async def reserve(
    client: aioredis.Redis,
    settings: SecuritySettings,
    namespace: str,
    tenant: str,
    job_id: str,
    cost: int,
    context: grpc.aio.ServicerContext,
) -> None:
    """Right before the job is stored: its cost reserved in the tenant's queued allowance (checked again)."""
    await run_step("reserve", client, settings, namespace, tenant, job_id, cost, context)
