"""Long-lived RPCs are bounded: a tenant's WatchJob streams are capped per gateway (another tenant's are not
affected), and closing one frees its slot. Jobs of a namespace no worker serves stay queued, so streams stay open."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest

import cm3leon_client as api
from cm3leon_client import Client
from cm3leon_client.api import jobs_pb2
from services.stack import Stack
from tests.security.helpers import code_of

pytestmark = pytest.mark.slow
CAP = 2


@pytest.fixture(scope="module")
def idle_target(secure_stack: Stack) -> str:
    """A gateway of its own namespace: no worker takes its jobs."""
    env = {"CM3LEON_NAMESPACE": "idle", "CM3LEON_MAX_WATCH_STREAMS_PER_TENANT": str(CAP)}
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
