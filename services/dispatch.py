"""Fair dispatch: jobs reach the broker round-robin across tenants, within each tenant's running cap.

A new job waits in its tenant's backlog (`services.jobstore`). `DISPATCH_SCRIPT` hands jobs out, all in one Lua
script (so any number of dispatchers in any processes never hand one job out twice):
    window   per job queue (image, text: each its own ring and window, so text jobs never wait for a full image
             window), it stops once the broker holds `window` of the queue's jobs not yet started (outbox +
             published): the Celery queue stays about as long as the workers' slots, so a job waits behind at most
             one round of others;
    ring     a sorted set of the tenants with a backlog, by the turn they were last served; the lowest is served
             next and gets the next turn, so the tenants take turns; a tenant joining the ring takes the place just
             before the last turn served (just after it when it was served last itself: emptying and refilling a
             backlog gains nothing), so its first job goes out within one round, however long the others' are;
    cap      a tenant whose dispatched, unfinished jobs (its `active` hash, job -> cost) would exceed
             `tenant_max_running_cost` with its next job is skipped (it keeps its place); a tenant with nothing
             running may always start one job, however costly.
A dispatched job moves from the backlog to the outbox in the same step, so the durability rules of issue 28 hold
unchanged: a process that dies after the script leaves an outbox mark the reaper publishes, one that dies before
it leaves the job in the backlog the reaper's next dispatch takes. A job leaves `active` when it finishes
(`jobstore.release_dispatch`, in the transaction of its final write).

Dispatch runs after every submit and cancel (gateway), when a worker claims a job and when it ends one
(`worker/dispatching.py`), and in every reaper pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from services.jobstore import JobStore, decode_record
from services.keys import Keys, job_queues
from services.presence import live_workers
from services.records import JobState
from services.settings import StackSettings

log = logging.getLogger(__name__)
Publish = Callable[[str, str], None]  # (job id, queue): hand the job's message to the broker

# One queue per call. KEYS: ring, turn, outbox, published, costs, queued (the queue's QUEUED jobs).
# ARGV: now, window, running cap, "{ns}:" (job and active keys), the queue's backlog prefix.
# Returns the dispatched job ids in dispatch order. Backlog and active keys are derived from the ring's tenant
# hashes (one Redis, not a cluster: the keys of a script are not all known before it runs).
DISPATCH_SCRIPT = """
local ring, turn, outbox, published, costs, queued = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now, window, cap, prefix, backlogs = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local function exists(job) return redis.call('EXISTS', prefix .. 'job:' .. job) == 1 end
local function running(active)
  local total, entries = 0, redis.call('HGETALL', active)
  for i = 1, #entries, 2 do
    if exists(entries[i]) then total = total + tonumber(entries[i + 1]) else redis.call('HDEL', active, entries[i]) end
  end
  return total
end
local function head(backlog)
  while true do
    local first = redis.call('ZRANGE', backlog, 0, 0)[1]
    if not first or exists(first) then return first end
    redis.call('ZREM', backlog, first)
  end
end
-- this queue's jobs handed to the broker and not yet started (marked, or published and still queued)
local inflight, seen = 0, {}
for _, set in ipairs({outbox, published}) do
  for _, job in ipairs(redis.call('ZRANGE', set, 0, -1)) do
    if not seen[job] and redis.call('ZSCORE', queued, job) then inflight = inflight + 1 end
    seen[job] = true
  end
end
local dispatched, full = {}, {}
while inflight < window do
  local pick
  for _, tenant in ipairs(redis.call('ZRANGE', ring, 0, -1)) do
    if not full[tenant] then
      local backlog, active = backlogs .. tenant, prefix .. 'active:' .. tenant
      local job = head(backlog)
      if not job then
        redis.call('ZREM', ring, tenant)
      else
        local cost = tonumber(redis.call('HGET', costs, job) or 1)
        local held = running(active)
        if held == 0 or held + cost <= cap then
          pick = {tenant, job, backlog, active, cost}
          break
        end
        full[tenant] = true
      end
    end
  end
  if not pick then break end
  local tenant, job, backlog, active, cost = pick[1], pick[2], pick[3], pick[4], pick[5]
  redis.call('ZREM', backlog, job)
  redis.call('HSET', active, job, cost)
  redis.call('ZADD', outbox, now, job)
  local served = redis.call('HINCRBY', turn, 'n', 1)
  redis.call('HSET', turn, 'last', tenant)
  if redis.call('ZCARD', backlog) > 0 then
    redis.call('ZADD', ring, served, tenant)
  else
    redis.call('ZREM', ring, tenant)
  end
  inflight = inflight + 1
  dispatched[#dispatched + 1] = job
end
return dispatched
"""


def window_of(settings: StackSettings, workers: Iterable[Mapping[str, Any]]) -> int:
    """Jobs a queue may hold at the broker not yet started: the setting, or (0) the live workers' job slots, at
    least 1."""
    if settings.dispatch_window:
        return settings.dispatch_window
    return max(1, sum(int(info.get("slots", 1)) for info in workers))


def dispatch_call(keys: Keys, settings: StackSettings, window: int, queue: str) -> tuple[list[str], list[Any]]:
    """DISPATCH_SCRIPT's keys and arguments for one job queue."""
    script_keys = [keys.ring(queue), keys.turn(queue), keys.outbox, keys.published, keys.costs, keys.queued(queue)]
    arguments = [time.time(), window, settings.tenant_max_running_cost, f"{keys.namespace}:", keys.backlogs(queue)]
    return script_keys, arguments


def dispatch_calls(keys: Keys, settings: StackSettings, window: int) -> list[list[Any]]:
    """The arguments of DISPATCH_SCRIPT's EVAL, one per job queue."""
    calls = []
    for queue in job_queues(keys.namespace):
        script_keys, arguments = dispatch_call(keys, settings, window, queue)
        calls.append([DISPATCH_SCRIPT, len(script_keys), *script_keys, *arguments])
    return calls


def take(store: JobStore, settings: StackSettings) -> list[str]:
    """Dispatch what the windows and the caps allow (marked in the outbox, not yet published): job ids in order."""
    window = window_of(settings, live_workers(store.client, store.keys).values())
    calls = dispatch_calls(store.keys, settings, window)
    return [raw.decode() for call in calls for raw in store.client.eval(*call)]


def dispatch(store: JobStore, settings: StackSettings, publish: Publish) -> list[str]:
    """Dispatch and publish; the published job ids in order. A job whose publish fails stays in the outbox (with
    the rest), for the reaper's sweep."""
    published = []
    for job_id in take(store, settings):
        record = decode_record(store.client.get(store.keys.job(job_id)))
        if record is None or record.state != JobState.QUEUED:
            continue
        try:
            publish(job_id, record.queue)
            store.mark_published(job_id, record.queue)
        except Exception as error:  # the broker or Redis is away: this and the rest wait in the outbox
            log.warning("publishing job %s failed (%s); the reaper publishes it", job_id, type(error).__name__)
            break
        published.append(job_id)
    return published
