"""Tracing across processes, health checking and reflection, the stubs' freshness, the corpus service, and a
killed worker losing no job (acks_late redelivery)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

import cm3leon_client as api
from cm3leon_client import Client
from cm3leon_client.api import corpus_pb2, jobs_pb2
from services.keys import Keys
from services.presence import live_workers
from services.stack import ROOT, Stack
from tests.serving.fixtures import spans_of


@pytest.mark.slow
def test_one_trace_from_gateway_through_worker(stack: Stack, client: Client) -> None:
    job = client.wait(client.submit(api.text_to_image("a traced circle", seed=4, retrieved_k=1)).job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    deadline = time.monotonic() + 10
    while True:  # the worker's last spans are written as they end, just after the job's final snapshot
        spans = spans_of(stack)
        trace_ids = {s["trace_id"] for s in spans if s["attributes"].get("job.id") == job.job_id}
        trace = [s for s in spans if s["trace_id"] in trace_ids]
        # The worker's job span ends last (after the upload): wait for it too.
        names = {s["name"].rsplit("/", 1)[-1] for s in trace}
        if {"SubmitJob", "upload", "worker.run_job"} <= names or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(trace_ids) == 1, "every span of the job in one trace"
    [root] = [s for s in trace if s["parent_id"] is None]
    assert root["name"] == "cm3leon.v1.JobService/SubmitJob"
    names = {s["name"] for s in trace}
    assert {"enqueue", "worker.run_job", "retrieval", "decoding", "upload"} <= names, names
    services = {s["service"] for s in trace}
    assert services == {"cm3leon-gateway", "cm3leon-worker"}, services
    assert len({s["pid"] for s in trace}) == 2, "two processes, one trace"
    [run] = [s for s in trace if s["name"] == "worker.run_job"]
    assert run["attributes"]["job.kind"] == "text_to_image" and run["attributes"]["tokens.generated"] > 0


@pytest.mark.slow
def test_health_and_reflection(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "cm3leon.v1.JobService", "cm3leon.v1.CorpusService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [response] = list(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in response.list_services_response.service}
        assert {"cm3leon.v1.JobService", "cm3leon.v1.CorpusService", "grpc.health.v1.Health"} <= names
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="cm3leon.v1.JobService")
        [response] = list(stub.ServerReflectionInfo(iter([request])))
        assert response.file_descriptor_response.file_descriptor_proto, "descriptors for grpcurl"


def test_stubs_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.protos", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_corpus_add_search_delete(client: Client) -> None:
    documents = [
        corpus_pb2.CorpusDocument(doc_id="user-doc-1", text="a purple triangle at the bottom right"),
        corpus_pb2.CorpusDocument(doc_id="user-doc-2", text="a pink star", image=api.image_input(_png())),
    ]
    added = client.add_documents(documents)
    assert list(added.doc_ids) == ["user-doc-1", "user-doc-2"]
    size = added.memory_size
    assert client.add_documents(documents).memory_size == size, "re-adding overwrites (same ids)"
    found = client.search(text="a purple triangle at the bottom right", k=32)
    assert "user-doc-1" in {d.doc_id for d in found.documents}
    assert [d.score for d in found.documents] == sorted((d.score for d in found.documents), reverse=True)
    assert client.delete_documents(["user-doc-1", "user-doc-2"]).memory_size == size - 2
    found = client.search(text="a purple triangle at the bottom right", k=32)
    assert "user-doc-1" not in {d.doc_id for d in found.documents}
    with pytest.raises(grpc.RpcError) as raised:
        client.add_documents([corpus_pb2.CorpusDocument(doc_id="bad id!", text="x")])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "doc_id" in raised.value.details()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_killed_worker_loses_no_job(stack: Stack, client: Client) -> None:
    """SIGKILL the worker process (its job threads with it) mid-job: a worker started again loads the model and
    runs the job again (its lease expired, or its unacknowledged message came back); its delivery count shows the
    second run."""
    keys = Keys(stack.namespace)
    store = redis.Redis(port=stack.redis_port)
    job = client.submit(api.text_to_image("a job that survives", num_images=2))
    assert job.seed > 0, "the gateway draws the seed at submit, so a redelivery decodes the same outputs"
    for snapshot in client.watch(job.job_id):
        if snapshot.state == jobs_pb2.JOB_STATE_RUNNING and snapshot.progress.tokens_done > 0:
            break
    pids = {int(info["pid"]) for info in live_workers(store, keys).values()}
    running = [pid for pid in pids if _alive(pid)]
    assert running, "the worker process that runs the job"
    stack.kill_service("worker")
    assert not any(_alive(pid) for pid in running)
    stack.start_worker("worker", stack.worker_env)  # type: ignore[attr-defined]
    final = client.wait(job.job_id, timeout_s=120)
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
    record = json.loads(store.get(keys.job(job.job_id)))
    assert record["deliveries"] == 2
    assert final.seed == job.seed and len(final.result.images) == 2
    rerun = client.wait(client.submit(api.text_to_image("a job that survives", num_images=2, seed=job.seed)).job_id)
    assert [i.sha256 for i in rerun.result.images] == [i.sha256 for i in final.result.images]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        ("services.gateway, services.servicers", ("torch", "worker")),
        ("cm3leon_client, cm3leon_client.cli", ("torch", "numpy", "cm3leon", "services", "worker")),
        (
            "cm3leon.inference.engine, cm3leon.inference.handlers",
            ("grpc", "celery", "redis", "minio", "opentelemetry", "services"),
        ),
    ],
    ids=["gateway-never-imports-torch", "client-imports-nothing-of-the-project", "engine-never-imports-services"],
)
def test_import_boundaries(modules: str, forbidden: tuple[str, ...]) -> None:
    code = f"import sys, {modules}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(forbidden)!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
