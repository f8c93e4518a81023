"""Fair use: a per-tenant token bucket (rate and burst) and a per-tenant cap on queued work, both weighted by a
job's cost (its decoded tokens, `services.cost`), checked and taken in Redis by one script so concurrent submits
cannot overshoot.
A refusal is RESOURCE_EXHAUSTED with a `retry-after` (seconds) in the trailing metadata.

    {ns}:quota:{tenant sha}:bucket    hash: tokens, at (ms)
    {ns}:quota:{tenant sha}:queued    sorted set: job id -> reservation time (ms); costs in ...:costs
    {ns}:quota:{tenant sha}:costs     hash: job id -> cost
    {ns}:quota:{tenant sha}:held      the sum of ...:costs: an upper bound of the tenant's queued work

Two steps of `ADMIT`: `rate` (before any decoding: the queued cap is checked and the job's cost taken from the
bucket) and `reserve` (right before the job is stored: the cap checked again and the cost reserved); a submit runs
them inside its one script (`services.submission`). A reservation counts while its job is in one of the queued
sets, or for a short grace while the job is being stored. Counting that exactly scans the tenant's reservations
(dropping the jobs that left the queue), so it runs only when the upper bound `held` would refuse: a submit well
within the cap costs Redis a few commands, however many jobs the tenant has queued. A request refused between the
two steps (a bad image) costs its tokens but holds no queued allowance. The cap on running work is the
dispatcher's (`services.dispatch`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import redis.asyncio as aioredis

from services.errors import ServiceError
from services.keys import Keys, tenant_hash
from services.security_settings import SecuritySettings

RETRY_AFTER_HEADER = "retry-after"
RESERVATION_GRACE_MS = 10_000  # a reserved job not yet in a queued set still counts this long
# KEYS: bucket, queued, costs, held, then every queued set. ARGV: rate, burst, cap, cost, job id, grace (ms), step.
# Returns {1, 0} when admitted, {0, -1} over the queued cap, {0, retry ms} over the rate.
ADMIT = """
local bucket, queued, costs, held_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rate, burst, cap, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local job, grace, step = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local function counted()
  local held = 0
  local members = redis.call('ZRANGE', queued, 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    local id, reserved = members[i], tonumber(members[i + 1])
    local waiting = now - reserved < grace
    for q = 5, #KEYS do
      if not waiting and redis.call('ZSCORE', KEYS[q], id) then waiting = true end
    end
    if waiting then
      held = held + tonumber(redis.call('HGET', costs, id) or 1)
    else
      redis.call('ZREM', queued, id)
      redis.call('HDEL', costs, id)
    end
  end
  redis.call('SET', held_key, held, 'PX', 86400000)
  return held
end
local held = tonumber(redis.call('GET', held_key) or -1)
if held < 0 or held + cost > cap then held = counted() end
if held + cost > cap then
  return {0, -1}
end
if step == 'reserve' then
  redis.call('ZADD', queued, now, job)
  redis.call('HSET', costs, job, cost)
  redis.call('INCRBY', held_key, cost)
  for _, key in ipairs({queued, costs, held_key}) do redis.call('PEXPIRE', key, 86400000) end
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
    return [f"{prefix}:bucket", f"{prefix}:queued", f"{prefix}:costs", f"{prefix}:held"]


@dataclass(frozen=True)
class Admission:
    """One step of ADMIT for a tenant's job: `rate` (the bucket) or `reserve` (the queued allowance)."""

    step: Literal["rate", "reserve"]
    settings: SecuritySettings
    namespace: str
    tenant: str
    job_id: str
    cost: int

    @property
    def charged(self) -> int:
        """The cost taken: at least 1, and never more than a limit (a job costlier than the burst still runs)."""
        settings = self.settings
        return min(max(1, self.cost), settings.tenant_burst, settings.tenant_max_queued_cost)

    def script_call(self) -> tuple[list[str], list[Any]]:
        """ADMIT's keys and arguments."""
        settings, namespace = self.settings, self.namespace
        limits = [settings.tenant_rate_per_s, settings.tenant_burst, settings.tenant_max_queued_cost]
        arguments = [*limits, self.charged, self.job_id, RESERVATION_GRACE_MS, self.step]
        return [*quota_keys(namespace, self.tenant), *Keys(namespace).queued_sets()], arguments

    def check(self, reply: Sequence[int], context: grpc.aio.ServicerContext) -> None:
        """Nothing when ADMIT admitted; else QuotaExceeded, with the retry-after trailer."""
        admitted, retry_ms = int(reply[0]), int(reply[1])
        if admitted:
            return
        settings = self.settings
        if retry_ms < 0:
            retry_s = float(settings.tenant_queued_retry_s)
            limit = settings.tenant_max_queued_cost
            reason = f"your queued work is at its limit (cost {limit}; this job costs {self.charged})"
        else:
            retry_s = math.ceil(retry_ms / 100) / 10
            rate = f"{settings.tenant_rate_per_s:g}"
            reason = f"your submit rate is over its limit (cost {rate} per second; this job costs {self.charged})"
        context.set_trailing_metadata(((RETRY_AFTER_HEADER, f"{retry_s:g}"),))
        raise QuotaExceeded(f"{reason}; retry after {retry_s:g} s")


async def run_admission(client: aioredis.Redis, admission: Admission, context: grpc.aio.ServicerContext) -> None:
    """One admission step on its own (a submit runs its steps inside its one script, `services.submission`)."""
    keys, arguments = admission.script_call()
    admission.check(await client.register_script(ADMIT)(keys=keys, args=arguments), context)
