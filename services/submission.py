"""A submit's Redis work in one round trip: its steps run in order inside one Lua script, which stops at the first
that refuses.

The steps are the scripts of their own modules (`quotas.ADMIT`, `jobstore.CREATE_SCRIPT`,
`dispatch.DISPATCH_SCRIPT`), each wrapped as a function of its own KEYS and ARGV, plus three small ones:
    existing  a retry's request id names a live job: stop with it (before any admission is charged)
    room      the queued jobs over every queue, stopping when they reach the gateway's limit
    rank      the new job's place in its queue (its position in the reply)
Run together the steps are isolated (no other command runs between them), so concurrent submits never overshoot
a limit nor create one request id twice, and each step costs the gateway a function call instead of a round trip
(a submit's Redis calls were most of the gateway's CPU).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from services.dispatch import DISPATCH_SCRIPT, dispatch_call
from services.jobstore import CREATE_SCRIPT, create_call
from services.keys import Keys
from services.quotas import ADMIT, Admission
from services.records import JobRecord
from services.settings import StackSettings

# KEYS: the idempotency key. ARGV: the job key prefix. {0, record} when the key names a live job, else {1}.
EXISTING = """
local job = redis.call('GET', KEYS[1])
if job then
  local raw = redis.call('GET', ARGV[1] .. job)
  if raw then return {0, raw} end
end
return {1}
"""
# KEYS: the queued sets. ARGV: the limit. {1, queued} below the limit, {0, queued} at it.
ROOM = """
local queued = 0
for _, key in ipairs(KEYS) do queued = queued + redis.call('ZCARD', key) end
if queued >= tonumber(ARGV[1]) then return {0, queued} end
return {1, queued}
"""
# KEYS: the queued set. ARGV: the job id. {1, rank} (0-based; -1 when not queued).
RANK = """
return {1, redis.call('ZRANK', KEYS[1], ARGV[1]) or -1}
"""
# The dispatch step also returns the records of the jobs it handed out (the caller publishes them).
DISPATCH = f"""
local ids = (function(KEYS, ARGV)
{DISPATCH_SCRIPT}
end)(KEYS, ARGV)
local records = {{}}
for i, id in ipairs(ids) do records[i] = redis.call('GET', ARGV[4] .. 'job:' .. id) or '' end
return {{1, ids, records}}
"""
STEP_SCRIPTS = {
    "existing": EXISTING,
    "room": ROOM,
    "admit": ADMIT,
    "create": CREATE_SCRIPT,
    "dispatch": DISPATCH,
    "rank": RANK,
}
# ARGV[1]: the plan, a JSON list of [step, key count, argument count]; the steps' keys and arguments follow in
# order. Returns the replies of the steps run; the last one refused when its first element is 0.
SUBMIT_SCRIPT = (
    "local steps = {}\n"
    + "".join(f"steps['{name}'] = function(KEYS, ARGV)\n{body}\nend\n" for name, body in STEP_SCRIPTS.items())
    + """
local replies, next_key, next_argument = {}, 1, 2
for i, step in ipairs(cjson.decode(ARGV[1])) do
  local name, key_count, argument_count = step[1], step[2], step[3]
  local keys = {unpack(KEYS, next_key, next_key + key_count - 1)}
  local arguments = {unpack(ARGV, next_argument, next_argument + argument_count - 1)}
  next_key, next_argument = next_key + key_count, next_argument + argument_count
  local reply = steps[name](keys, arguments)
  replies[i] = reply
  if reply[1] == 0 then return replies end
end
return replies
"""
)


@dataclass
class Steps:
    """The steps of one script call, in order."""

    labels: list[str] = field(default_factory=list)
    plan: list[tuple[str, int, int]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    arguments: list[Any] = field(default_factory=list)

    def add(self, step: str, keys: Sequence[str], arguments: Sequence[Any], label: str | None = None) -> None:
        """Append a step; its reply is found under `label` (default: the step's name)."""
        if step not in STEP_SCRIPTS:
            raise ValueError(f"no submit step {step!r}")
        self.labels.append(label or step)
        self.plan.append((step, len(keys), len(arguments)))
        self.keys.extend(keys)
        self.arguments.extend(arguments)

    async def run(self, client: aioredis.Redis) -> dict[str, list[Any]]:
        """Run the steps; label -> reply, for the steps that ran (the last one may have refused)."""
        script = client.register_script(SUBMIT_SCRIPT)
        replies = await script(keys=self.keys, args=[json.dumps(self.plan), *self.arguments])
        return dict(zip(self.labels, replies, strict=False))


def refused(replies: dict[str, list[Any]], label: str) -> bool:
    """Whether the step `label` ran and refused (it is then the last reply)."""
    reply = replies.get(label)
    return reply is not None and int(reply[0]) == 0


def admission_steps(keys: Keys, max_queued: int, tenant: str, request_id: str, rate: Admission) -> Steps:
    """A submit's checks before any work on its request: a retry re-attaches (it costs nothing new), then the
    queues' room and the tenant's rate."""
    steps = Steps()
    if request_id:
        steps.add("existing", [keys.idempotency(tenant, request_id)], [keys.job("")])
    steps.add("room", keys.queued_sets(), [max_queued])
    steps.add("admit", *rate.script_call(), label=rate.step)
    return steps


def creation_steps(
    steps: Steps, keys: Keys, settings: StackSettings, ttl_s: int, record: JobRecord, reserve: Admission, window: int
) -> None:
    """Append the job's reservation, its creation, its queue's dispatch (within `window`) and its place in the
    queue."""
    steps.add("admit", *reserve.script_call(), label=reserve.step)
    steps.add("create", *create_call(keys, record, ttl_s))
    steps.add("dispatch", *dispatch_call(keys, settings, window, record.queue))
    steps.add("rank", [keys.queued(record.queue)], [record.job_id])
