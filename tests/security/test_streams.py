"""Long-lived RPCs are bounded: a tenant's WatchJob streams and corpus calls in flight are capped per gateway
(another tenant's are not affected), and a finished one frees its slot. In a namespace no worker serves, jobs stay
queued (streams stay open) and corpus calls wait for their timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import cm3leon_client as api
from cm3leon_client import Client
from cm3leon_client.api import corpus_pb2, corpus_pb2_grpc, jobs_pb2
from cm3leon_client.channel import API_KEY_HEADER
from services.stack import Stack
from tests.security.helpers import code_of

pytestmark = pytest.mark.slow
CAP = 2
CORPUS_TIMEOUT_S = 4


@pytest.fixture(scope="module")
def idle_target(secure_stack: Stack) -> str:
    """A gateway of its own namespace: no worker takes its jobs."""
    env = {
        "CM3LEON_NAMESPACE": "idle",
        "CM3LEON_MAX_WATCH_STREAMS_PER_TENANT": str(CAP),
        "CM3LEON_MAX_CORPUS_CALLS_PER_TENANT": str(CAP),
        "CM3LEON_CORPUS_TIMEOUT_S": str(CORPUS_TIMEOUT_S),
    }
    _, port = secure_stack.start_gateway("gateway-idle", env=env)
    return f"127.0.0.1:{port}"


@pytest.fixture()
def clients(idle_target: str) -> Iterator[tuple[Client, Client]]:
    with Client(idle_target, "key-a") as a, Client(idle_target, "key-b") as b:
        yield a, b


def watch(client: Client, job_id: str) -> grpc.Future:
    return client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), metadata=client.metadata)


def open_stream(client: Client, job_id: str) -> grpc.Future:
    """A WatchJob stream that has delivered its first snapshot (so it holds its slot)."""
    stream = watch(client, job_id)
    next(stream)
    return stream


def test_watch_streams_are_capped_per_tenant(clients: tuple[Client, Client]) -> None:
    a, b = clients
    job_a = a.submit(api.text_to_image("stays queued", seed=1))
    job_b = b.submit(api.text_to_image("stays queued", seed=2))
    streams = [open_stream(a, job_a.job_id) for _ in range(CAP)]
    code, details = code_of(lambda: next(watch(a, job_a.job_id)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "WatchJob" in details
    other = open_stream(b, job_b.job_id)  # another tenant is not affected
    streams[0].cancel()
    closed = threading.Event()
    for _ in range(50):  # the server notices the cancel asynchronously
        try:
            streams.append(open_stream(a, job_a.job_id))
            closed.set()
            break
        except grpc.RpcError:
            threading.Event().wait(0.1)
    assert closed.is_set(), "a closed stream frees its slot"
    for stream in [*streams, other]:
        stream.cancel()
    a.cancel(job_a.job_id)
    b.cancel(job_b.job_id)


def search_once(target: str, key: str, text: str) -> tuple[grpc.StatusCode, str]:
    """One SearchDocuments attempt (the SDK's channel would retry UNAVAILABLE)."""
    with grpc.insecure_channel(target) as channel:
        stub = corpus_pb2_grpc.CorpusServiceStub(channel)
        request = corpus_pb2.SearchDocumentsRequest(text=text, k=1)
        return code_of(lambda: stub.SearchDocuments(request, metadata=((API_KEY_HEADER, key),), timeout=30))


def test_corpus_calls_in_flight_are_capped_per_tenant(idle_target: str) -> None:
    with ThreadPoolExecutor(max_workers=CAP + 1) as pool:
        waiting = [pool.submit(search_once, idle_target, "key-a", "unanswered") for _ in range(CAP)]
        time.sleep(1.0)  # both calls are in flight (nothing answers them before the timeout)
        code, details = search_once(idle_target, "key-a", "one more")
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "corpus calls" in details
        other = pool.submit(search_once, idle_target, "key-b", "another tenant")
        with grpc.insecure_channel(idle_target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        codes = [future.result()[0] for future in [*waiting, other]]
    assert codes == [grpc.StatusCode.UNAVAILABLE] * (CAP + 1), "unanswered: UNAVAILABLE at the timeout"
    assert search_once(idle_target, "key-a", "again")[0] == grpc.StatusCode.UNAVAILABLE, "the slots were freed"
