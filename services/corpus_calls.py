"""CorpusService calls: the gateway sends a corpus task carrying a reply address and awaits the worker's reply on
Redis itself; nothing goes through Celery's result backend, whose concurrent `result.get` from threads is a known
race (celery#3761, #6335: a result handed to the wrong waiter or lost), and no thread waits.

    {ns}:corpus-replies:{gateway id}    list of JSON replies {"call": id, "result": ...} or {"call": id, "error":
                                        {"code", "message"}}, one list per gateway process

Each gateway process reads its own list with one BLPOP loop (one Redis connection however many calls wait) and
hands each reply to the call waiting for its id; a reply whose call has ended (timed out, cancelled) is dropped,
never given to another call. The gateway id and call ids are random (128 bits). A worker writes a reply with
RPUSH + EXPIRE in one transaction, so the list of a gateway that is gone expires. Calls in flight are capped per
tenant, so one tenant's unanswered calls cannot crowd out the others'.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
import redis
from celery.exceptions import SoftTimeLimitExceeded

from services.errors import ServiceError
from services.interceptors import status_of
from services.quotas import QuotaExceeded
from services.redis_clients import async_redis_client
from services.security_settings import SecuritySettings
from services.settings import StackSettings

log = logging.getLogger(__name__)
REPLY_TTL_S = 300  # a reply list lives this long after its last reply (a gateway gone leaves nothing behind)
READ_BLOCK_S = 1.0  # one BLPOP's wait (below the Redis socket timeout); the reader stops when no call waits
READ_RETRY_S = 0.5  # the reader's pause after a Redis error
ID_HEX = 32
# The codes a worker's reply may carry; anything else is answered INTERNAL.
REPLY_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "UNIMPLEMENTED",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
    }
)
WORKER_INTERNAL_MESSAGE = "internal error in the worker; the details are in the worker's log"


def replies_key(namespace: str, gateway_id: str) -> str:
    return f"{namespace}:corpus-replies:{gateway_id}"


class CorpusCallFailed(ServiceError):
    """The worker answered with an error: its code (one of REPLY_CODES) and clean message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code if code in REPLY_CODES else "INTERNAL"


def reply_result(reply: Mapping[str, Any]) -> Any:
    """The result a reply carries, or its error raised."""
    error = reply.get("error")
    if error is None:
        return reply.get("result")
    if not isinstance(error, Mapping) or error.get("code") not in REPLY_CODES:
        raise CorpusCallFailed("INTERNAL", WORKER_INTERNAL_MESSAGE)
    raise CorpusCallFailed(str(error["code"]), str(error.get("message", "")))


class CorpusCalls:
    """One gateway process's corpus calls: per-tenant slots, the calls waiting for replies and their reader."""

    def __init__(self, settings: StackSettings) -> None:
        self.key = replies_key(settings.namespace, secrets.token_hex(ID_HEX // 2))
        self.client = async_redis_client(settings)  # the reader's own: a BLPOP never waits on a busy pool
        self.waiting: dict[str, asyncio.Future[dict]] = {}
        self.reader: asyncio.Task[None] | None = None
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

    @contextlib.asynccontextmanager
    async def expecting(self) -> AsyncIterator[tuple[dict[str, str], asyncio.Future[dict]]]:
        """A fresh reply address (for the task's `reply_to`) and the future its reply will complete, registered
        before the task is sent; the registration ends with the block, so a later reply is dropped."""
        call = secrets.token_hex(ID_HEX // 2)
        reply: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self.waiting[call] = reply
        self.ensure_reader()
        try:
            yield {"key": self.key, "call": call}, reply
        finally:
            del self.waiting[call]

    async def result(self, reply: asyncio.Future[dict], timeout_s: float) -> Any:
        """The call's result (or its error raised); TimeoutError when no reply came within `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            return reply_result(await reply)

    def ensure_reader(self) -> None:
        if self.reader is None or self.reader.done():
            self.reader = asyncio.get_running_loop().create_task(self.read(), name="cm3leon-corpus-replies")

    async def read(self) -> None:
        """Pop replies and hand them to their calls while any call waits (the check and the exit happen with no
        await between them, so a call registered meanwhile finds the task done and starts another)."""
        while self.waiting:
            try:
                popped = await self.client.blpop([self.key], timeout=READ_BLOCK_S)
            except (redis.RedisError, OSError) as error:
                log.warning("reading corpus replies failed (%s); retrying", type(error).__name__)
                await asyncio.sleep(READ_RETRY_S)
                continue
            if popped is not None:
                self.deliver(popped[1])

    def deliver(self, raw: bytes) -> None:
        try:
            reply = json.loads(raw)
            call = reply["call"]
        except (ValueError, TypeError, KeyError):
            log.warning("dropped a corpus reply that is not one (%d bytes)", len(raw))
            return
        waiter = self.waiting.get(call) if isinstance(call, str) else None
        if waiter is None or waiter.done():
            log.info("dropped a corpus reply whose call has ended")
            return
        waiter.set_result(reply)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        await self.client.aclose()


# ----- the worker's side -----


def checked_address(namespace: str, reply_to: Mapping[str, str]) -> tuple[str, str]:
    """(list key, call id) of a reply address, checked to be one a gateway of this namespace made: a task
    message can never make the worker write to another key."""
    key, call = reply_to.get("key", ""), reply_to.get("call", "")
    pattern = rf"{re.escape(namespace)}:corpus-replies:[0-9a-f]{{{ID_HEX}}}"
    if not re.fullmatch(pattern, str(key)) or not re.fullmatch(rf"[0-9a-f]{{{ID_HEX}}}", str(call)):
        raise ValueError("reply_to is not a corpus reply address of this namespace")
    return key, call


def reply_error(error: Exception) -> dict[str, str]:
    """A typed error for the reply: a domain error's code and message, an outage's UNAVAILABLE, a time limit's
    DEADLINE_EXCEEDED; anything else INTERNAL with no internals (logged here, in the worker)."""
    if isinstance(error, SoftTimeLimitExceeded):
        return {"code": "DEADLINE_EXCEEDED", "message": "the corpus call ran past the worker's time limit"}
    code, message = status_of(error)
    if code == grpc.StatusCode.INTERNAL or code.name not in REPLY_CODES:
        log.error("a corpus call failed", exc_info=error)
        return {"code": "INTERNAL", "message": WORKER_INTERNAL_MESSAGE}
    return {"code": code.name, "message": message}


def answer(client: redis.Redis, namespace: str, reply_to: Mapping[str, str], compute: Callable[[], Any]) -> None:
    """Run `compute` and write its result (JSON) or typed error to the reply address, RPUSH + EXPIRE in one
    transaction."""
    key, call = checked_address(namespace, reply_to)
    try:
        reply = json.dumps({"call": call, "result": compute()})
    except Exception as error:
        reply = json.dumps({"call": call, "error": reply_error(error)})
    with client.pipeline(transaction=True) as pipe:
        pipe.rpush(key, reply)
        pipe.expire(key, REPLY_TTL_S)
        pipe.execute()
