"""A corpus reply that arrives after the gateway gave up on its call is dropped, never handed to a later call of
the same gateway, and its reply list does not stay in Redis.

Its own namespace on the session's Redis and S3: the gateway starts with no worker, so the first call times out;
the worker started afterwards runs that call's task and replies to nobody; the next call must get its own answer.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grpc
import pytest
import redis

from cm3leon_client.api import corpus_pb2, corpus_pb2_grpc
from cm3leon_client.channel import API_KEY_HEADER
from services.corpus_calls import REPLY_TTL_S
from services.stack import Stack

pytestmark = pytest.mark.slow
NAMESPACE = "late-reply"
CORPUS_TIMEOUT_S = 2
LATE_DOC = "late-reply-doc"


def stub_call(target: str, key: str, method: str, request: object) -> object:
    """One attempt (the SDK's channel would retry UNAVAILABLE, sending the task again)."""
    with grpc.insecure_channel(target) as channel:
        stub = corpus_pb2_grpc.CorpusServiceStub(channel)
        return getattr(stub, method)(request, metadata=((API_KEY_HEADER, key),), timeout=120)


def wait_for(condition: object, what: str, timeout_s: float = 60.0) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout_s} s")


def test_a_reply_after_the_gateway_gave_up_reaches_no_later_call(
    stack: Stack, artifacts: dict[str, str], tmp_path: Path
) -> None:
    environment = {**stack.environment, "CM3LEON_CORPUS_TIMEOUT_S": str(CORPUS_TIMEOUT_S)}
    side = Stack(tmp_path / NAMESPACE, namespace=NAMESPACE, environment=environment)
    side.redis_port, side.s3_port = stack.redis_port, stack.s3_port
    client = redis.Redis(port=stack.redis_port)
    try:
        gateway, port = side.start_gateway()
        target = f"127.0.0.1:{port}"
        add = corpus_pb2.AddDocumentsRequest(documents=[corpus_pb2.CorpusDocument(doc_id=LATE_DOC, text="late")])
        with pytest.raises(grpc.RpcError) as gave_up:
            stub_call(target, "key-a", "AddDocuments", add)
        assert gave_up.value.code() == grpc.StatusCode.UNAVAILABLE, "no worker: the gateway gives up"

        memory = tmp_path / "qdrant"  # Qdrant local mode: one process per directory
        shutil.copytree(artifacts["CM3LEON_MEMORY_PATH"], memory)
        side.start_worker("worker", {**artifacts, "CM3LEON_MEMORY_PATH": str(memory)})
        [key] = wait_for(lambda: client.keys(f"{NAMESPACE}:corpus-replies:*"), "the late reply arrives")
        [late] = client.lrange(key, 0, -1)
        assert isinstance(json.loads(late)["result"], int), "the add's reply: tenant-a's document count"
        assert 0 < client.ttl(key) <= REPLY_TTL_S

        search = corpus_pb2.SearchDocumentsRequest(text="late", k=3)
        found = stub_call(target, "key-b", "SearchDocuments", search)
        assert len(found.documents) == 3, "the search's own answer (three documents), not the add's count"
        assert LATE_DOC not in {doc.doc_id for doc in found.documents}
        assert not client.exists(key), "the late reply was read and dropped; the empty list is gone"
        assert "dropped a corpus reply whose call has ended" in gateway.own_log()
        mine = stub_call(target, "key-a", "SearchDocuments", corpus_pb2.SearchDocumentsRequest(text="late", k=32))
        assert LATE_DOC in {doc.doc_id for doc in mine.documents}, "a call the gateway gave up on may still apply"
    finally:
        side.stop()
        client.close()
