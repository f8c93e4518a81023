"""CorpusService replies travel over Redis, never through Celery's result backend (whose concurrent `result.get` is
a known race, celery#3761 and #6335): many concurrent calls from several tenants each get exactly their own
answer, and no reply key or result-backend key stays behind."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded

from cm3leon_client import AsyncClient, Client
from cm3leon_client.api import corpus_pb2
from services.corpus_calls import (
    REPLY_TTL_S,
    WORKER_INTERNAL_MESSAGE,
    CorpusCallFailed,
    checked_address,
    reply_error,
    reply_result,
)
from services.errors import InvalidArgument
from services.stack import Stack
from services.tenancy import PermissionDenied

TENANT_KEYS = ("key-replies-1", "key-replies-2", "key-replies-3")
CALLS = 20  # per tenant, all in flight at once
COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle", "star")
Answer = tuple[tuple[str, str], ...]
Call = tuple[str, str, int]  # (API key, text, k)


@pytest.fixture(scope="module")
def replies_target(secure_stack: Stack) -> str:
    """A gateway of the secure stack whose tenants may each have CALLS corpus calls in flight."""
    _, port = secure_stack.start_gateway("gateway-replies", env={"CM3LEON_MAX_CORPUS_CALLS_PER_TENANT": str(CALLS)})
    return f"127.0.0.1:{port}"


def call_text(tenant: int, index: int) -> str:
    return f"{COLOURS[index % 5]} {SHAPES[index % 4]} note of tenant {tenant} number {index}"


def doc_id(tenant: int, index: int) -> str:
    return f"replies-{tenant}-{index}"


@pytest.fixture(scope="module")
def calls(replies_target: str) -> Iterator[list[Call]]:
    """Each tenant's CALLS documents (a search for one's text is one call: k = its index + 1, so every call of a
    tenant wants a different number of documents)."""
    made: list[Call] = []
    for tenant, key in enumerate(TENANT_KEYS):
        documents = [
            corpus_pb2.CorpusDocument(doc_id=doc_id(tenant, i), text=call_text(tenant, i)) for i in range(CALLS)
        ]
        with Client(replies_target, key) as client:
            client.add_documents(documents)
        made += [(key, call_text(tenant, i), i + 1) for i in range(CALLS)]
    yield made
    for tenant, key in enumerate(TENANT_KEYS):
        with Client(replies_target, key) as client:
            client.delete_documents([doc_id(tenant, i) for i in range(CALLS)])


async def search(target: str, calls: list[Call], concurrently: bool) -> list[Answer]:
    """Each call's answer as (doc id, text) pairs: all calls in flight at once, or one after another."""
    clients = {key: AsyncClient(target, key) for key in TENANT_KEYS}

    async def one(key: str, text: str, k: int) -> Answer:
        response = await clients[key].search(text=text, k=k)
        return tuple((doc.doc_id, doc.text) for doc in response.documents)

    try:
        if concurrently:
            return list(await asyncio.gather(*(one(*call) for call in calls)))
        return [await one(*call) for call in calls]
    finally:
        for client in clients.values():
            await client.close()


@pytest.mark.slow
def test_concurrent_corpus_calls_each_get_their_own_answer(
    secure_stack: Stack, replies_target: str, calls: list[Call]
) -> None:
    expected = asyncio.run(search(replies_target, calls, concurrently=False))
    assert len(set(expected)) == len(calls), "every call has an answer of its own (else a mix-up could pass)"
    for (key, _, k), answer in zip(calls, expected, strict=True):
        tenant = TENANT_KEYS.index(key)
        assert len(answer) == k
        assert all(not d.startswith("replies-") or d.startswith(f"replies-{tenant}-") for d, _ in answer)
    for _ in range(2):
        assert asyncio.run(search(replies_target, calls, concurrently=True)) == expected
    client = redis.Redis(port=secure_stack.redis_port)
    try:
        for key in client.scan_iter(match=f"{secure_stack.namespace}:corpus-replies:*"):
            assert 0 < client.ttl(key) <= REPLY_TTL_S, "a reply list expires"
        assert not list(client.scan_iter(match="*celery-task-meta-*")), "nothing in a Celery result backend"
        assert not list(client.scan_iter(match=f"{secure_stack.namespace}:results:*"))
    finally:
        client.close()


def test_a_task_message_cannot_make_the_worker_write_another_key() -> None:
    call = "0123456789abcdef" * 2
    assert checked_address("sec", {"key": f"sec:corpus-replies:{call}", "call": call}) == (
        f"sec:corpus-replies:{call}",
        call,
    )
    for reply_to in (
        {"key": "sec:job:abc", "call": call},
        {"key": f"other:corpus-replies:{call}", "call": call},
        {"key": f"sec:corpus-replies:{call}:x", "call": call},
        {"key": f"sec:corpus-replies:{call}", "call": "not hex"},
        {},
    ):
        with pytest.raises(ValueError):
            checked_address("sec", reply_to)


def test_worker_errors_reach_the_caller_typed_and_without_internals() -> None:
    def through_reply(error: Exception) -> tuple[str, str]:
        with pytest.raises(CorpusCallFailed) as raised:
            reply_result({"call": "c", "error": reply_error(error)})
        return raised.value.code, str(raised.value)

    assert through_reply(InvalidArgument("documents[3].doc_id", "too long")) == (
        "INVALID_ARGUMENT",
        "documents[3].doc_id: too long",
    )
    assert through_reply(PermissionDenied("not yours"))[0] == "PERMISSION_DENIED"
    assert through_reply(redis.ConnectionError("10.0.0.7:6379 refused")) == (
        "UNAVAILABLE",
        "the job store is unavailable; retry later",
    )
    assert through_reply(SoftTimeLimitExceeded())[0] == "DEADLINE_EXCEEDED"
    assert through_reply(RuntimeError("/srv/secret/path")) == ("INTERNAL", WORKER_INTERNAL_MESSAGE)
    assert through_reply(KeyError("x"))[1] == WORKER_INTERNAL_MESSAGE
    with pytest.raises(CorpusCallFailed) as forged:
        reply_result({"call": "c", "error": {"code": "OK", "message": "anything"}})
    assert (forged.value.code, str(forged.value)) == ("INTERNAL", WORKER_INTERNAL_MESSAGE)
    assert reply_result({"call": "c", "result": [1, 2]}) == [1, 2]
