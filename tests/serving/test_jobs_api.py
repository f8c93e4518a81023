"""The job API's contract: idempotency, ALREADY_EXISTS, cancellation, pagination, tenants, auth, validation,
backpressure."""

from __future__ import annotations

import io
import json

import grpc
import numpy as np
import pytest
from PIL import Image

import cm3leon_client as api
from cm3leon_client import Client
from cm3leon_client.api import common_pb2, jobs_pb2
from services.stack import Stack
from tests.serving.fixtures import API_KEYS

# Every test here talks to the session's real stack (Redis, S3, a Celery worker, the gateway).
pytestmark = pytest.mark.slow

FINISHED = api.FINISHED


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value.code(), raised.value.details()


def image_bytes(width: int, height: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 200, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_idempotent_resubmission_and_already_exists(client: Client) -> None:
    request = api.text_to_image("a green square", seed=11)
    first = client.submit(request, request_id="retry-1")
    again = client.submit(request, request_id="retry-1")
    assert again.job_id == first.job_id, "a retry re-attaches to the same job"
    code, details = code_of(lambda: client.submit(api.text_to_image("a red square", seed=11), request_id="retry-1"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "retry-1" in details
    done = client.wait(first.job_id)
    assert client.submit(request, request_id="retry-1").job_id == done.job_id, "also after it finished"


def test_cancel_a_running_job(client: Client) -> None:
    job = client.submit(api.text_to_image("a yellow diamond", num_images=2, seed=5))
    for snapshot in client.watch(job.job_id):
        if snapshot.state == jobs_pb2.JOB_STATE_RUNNING and snapshot.progress.tokens_done > 0:
            break
    assert snapshot.progress.tokens_done < snapshot.progress.tokens_total, "cancelled mid-decode"
    client.cancel(job.job_id)
    final = client.wait(job.job_id)
    assert final.state == jobs_pb2.JOB_STATE_CANCELLED and final.error.code == "CANCELLED"
    assert not final.result.images
    # The worker is free again: the next job runs to completion.
    assert (
        client.wait(client.submit(api.text_to_image("a pink star", seed=1)).job_id).state
        == jobs_pb2.JOB_STATE_SUCCEEDED
    )


def test_list_with_pagination_and_state_filter(target: str) -> None:
    with Client(target, "key-b") as tenant_b:
        before = {j.job_id for j in tenant_b.list(page_size=100).jobs}
        submitted = [tenant_b.submit(api.text_to_image(f"list job {i}", seed=i)).job_id for i in range(5)]
        tenant_b.cancel(submitted[-1])  # cancelled while queued, or soon after
        seen: list[str] = []
        token = ""
        while True:
            page = tenant_b.list(page_size=2, page_token=token)
            assert len(page.jobs) <= 2
            seen += [j.job_id for j in page.jobs]
            token = page.next_page_token
            if not token:
                break
        new = [job_id for job_id in seen if job_id not in before]
        assert new == submitted[::-1], "every job once, newest first"
        for job_id in submitted:
            tenant_b.wait(job_id)
        cancelled = tenant_b.list(states=[jobs_pb2.JOB_STATE_CANCELLED], page_size=100).jobs
        assert submitted[-1] in {j.job_id for j in cancelled}
        assert all(j.state == jobs_pb2.JOB_STATE_CANCELLED for j in cancelled)
        code, details = code_of(lambda: tenant_b.list(page_token="garbage!"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details


def test_tenant_isolation(client: Client, other_client: Client) -> None:
    job = client.submit(api.text_to_image("a private circle", seed=2))
    for call in (
        lambda: other_client.get(job.job_id),
        lambda: other_client.cancel(job.job_id),
        lambda: next(iter(other_client.watch(job.job_id))),
    ):
        assert code_of(call)[0] == grpc.StatusCode.NOT_FOUND
    assert job.job_id not in {j.job_id for j in other_client.list(page_size=100).jobs}
    finished = client.wait(job.job_id)
    key = f"key:{finished.result.images[0].key}"
    code, details = code_of(lambda: other_client.submit(api.caption(key)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "object_key" in details, "another tenant's object"


def test_auth(target: str) -> None:
    with Client(target, "not-a-key") as stranger:
        assert code_of(lambda: stranger.list())[0] == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: next(iter(stranger.watch("0" * 32))))[0] == grpc.StatusCode.UNAUTHENTICATED


BIG = "x" * 1001


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (jobs_pb2.JobRequest(), "request"),
        (api.text_to_image(""), "request.text_to_image.prompt"),
        (api.text_to_image(BIG), "request.text_to_image.prompt"),
        (api.text_to_image("ok", num_images=9), "request.text_to_image.num_images"),
        (api.text_to_image("ok", temperature=-1.0), "request.text_to_image.sampling.temperature"),
        (api.text_to_image("ok", top_p=0.0), "request.text_to_image.sampling.top_p"),
        (api.text_to_image("ok", guidance_scale=float("nan")), "request.text_to_image.sampling.guidance_scale"),
        (
            api.text_to_image("ok", guidance_plausibility=1.5),
            "request.text_to_image.sampling.guidance_plausibility",
        ),
        (
            api.text_to_image("ok", guidance_plausibility=-0.1),
            "request.text_to_image.sampling.guidance_plausibility",
        ),
        (api.caption(image_bytes(32, 32), guidance_plausibility=2.0), "request.caption.sampling.guidance_plausibility"),
        (api.text_to_image("ok", num_candidates=99), "request.text_to_image.sampling.num_candidates"),
        (api.text_to_image("ok", retrieved_k=100), "request.text_to_image.sampling.retrieved_k"),
        (api.text_to_image("ok", memory="../etc"), "request.text_to_image.sampling.memory"),
        (jobs_pb2.JobRequest(caption=jobs_pb2.Caption()), "request.caption.image"),
        (api.caption(b"not an image"), "request.caption.image.data"),
        (api.caption(image_bytes(8, 8, "GIF")), "request.caption.image.data"),
        (api.caption(image_bytes(2000, 1000)), "request.caption.image.data"),
        (api.caption(image_bytes(4, 4)), "request.caption.image.data"),
        (api.caption("key:../../etc/passwd"), "request.caption.image.object_key"),
        (api.caption(f"key:jobs/{'0' * 32}/output-0.png"), "request.caption.image.object_key"),
        (api.infill(image_bytes(32, 32), [(0.5, 0.5, 0.2, 0.9)]), "request.infill.regions[0]"),
        (api.infill(image_bytes(32, 32), []), "request.infill.regions"),
        # Infilling is greedy: a plausibility cut, even a valid one, is refused like the other sampling options.
        (api.infill(image_bytes(32, 32), [(0.0, 0.0, 0.3, 0.3)], guidance_plausibility=0.5), "request.infill.sampling"),
        (
            api.grounded_generation([("a circle", (0.0, 0.0, 1.5, 1.0))]),
            "request.grounded_generation.objects[0].box.x1",
        ),
    ],
)
def test_invalid_argument_names_the_field(client: Client, request_: jobs_pb2.JobRequest, field: str) -> None:
    code, details = code_of(lambda: client.submit(request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(field), details


def test_request_id_too_long(client: Client) -> None:
    code, details = code_of(lambda: client.submit(api.text_to_image("ok"), request_id="r" * 129))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("request_id")


def test_backpressure_resource_exhausted(stack: Stack) -> None:
    """A gateway of its own namespace (no worker consumes it) with room for one queued job."""
    child, port = stack.start_gateway(
        "gateway-bp",
        {"CM3LEON_NAMESPACE": "bp", "CM3LEON_MAX_QUEUED_JOBS": "1", "CM3LEON_API_KEYS": json.dumps(API_KEYS)},
    )
    try:
        with Client(f"127.0.0.1:{port}", "key-a") as bp:
            first = bp.submit(api.text_to_image("queued", seed=1))
            assert first.state == jobs_pb2.JOB_STATE_QUEUED and first.queue_position == 1
            code, details = code_of(lambda: bp.submit(api.text_to_image("one too many", seed=1)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit 1" in details
            assert bp.cancel(first.job_id).state == jobs_pb2.JOB_STATE_CANCELLED
            assert bp.submit(api.text_to_image("room again", seed=1)).state == jobs_pb2.JOB_STATE_QUEUED
    finally:
        child.stop()


def test_object_ref_inputs_are_checked(client: Client) -> None:
    image = common_pb2.ImageInput(object_key=f"inputs/{'f' * 32}/image.png")
    code, _ = code_of(lambda: client.submit(jobs_pb2.JobRequest(caption=jobs_pb2.Caption(image=image))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_graceful_shutdown_reports_not_serving_then_exits(stack: Stack) -> None:
    import signal
    import time

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    child, port = stack.start_gateway("gateway-drain", {"CM3LEON_DRAIN_S": "2"})
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        status = None
        while time.monotonic() < deadline and status != health_pb2.HealthCheckResponse.NOT_SERVING:
            status = health.Check(health_pb2.HealthCheckRequest()).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert child.process.wait(10) == 0
