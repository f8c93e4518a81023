"""End to end through gRPC: submit -> watch -> succeeded -> the objects exist in S3 with the reported sha256;
captioning of a generated image; previews; retrieval; reproducibility by seed; UNIMPLEMENTED kinds."""

from __future__ import annotations

import hashlib
import io
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image

import cm3leon_client as api
from cm3leon_client import Client
from cm3leon_client.api import jobs_pb2
from services.objectstore import ObjectStore
from services.stack import Stack

# Every test here talks to the session's real stack (Redis, S3, a Celery worker, the gateway).
pytestmark = pytest.mark.slow

SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_text_to_image_end_to_end(stack: Stack, client: Client) -> None:
    job = client.submit(api.text_to_image("a large red circle at the top left", seed=7, retrieved_k=2))
    assert job.state == jobs_pb2.JOB_STATE_QUEUED and len(job.job_id) == 32 and job.created_at.seconds > 0
    snapshots = list(client.watch(job.job_id))
    sequences = [s.sequence for s in snapshots]
    assert sequences == sorted(set(sequences)), "snapshots come with strictly growing sequence numbers"
    final = snapshots[-1]
    assert final.state == SUCCEEDED, final.error
    assert any(s.state == jobs_pb2.JOB_STATE_RUNNING for s in snapshots)
    resumed = list(client.watch(job.job_id, after_sequence=snapshots[1].sequence))
    assert [s.sequence for s in resumed] == [final.sequence], "a reconnecting client gets only what it missed"
    assert list(client.watch(job.job_id, after_sequence=final.sequence)) == []
    assert final.started_at.ToNanoseconds() >= final.created_at.ToNanoseconds()
    assert final.finished_at.ToNanoseconds() >= final.started_at.ToNanoseconds()
    assert final.progress.tokens_done == final.progress.tokens_total > 0
    assert final.seed == 7 and final.model_id.startswith("model@")
    assert final.usage.generated_tokens > 0 and final.usage.prompt_tokens > 0 and final.usage.seconds > 0
    # Retrieval: k = 2 documents of the memory were used as context, with their scores.
    assert len(final.retrieved) == 2 and all(d.doc_id.startswith("train-") and d.text for d in final.retrieved)
    # The output object: in S3 under its key, bytes matching the reported sha256 and size, a 32x32 PNG.
    [image] = final.result.images
    store = ObjectStore.from_settings(stack.settings())
    stored = store.get(image.key)
    assert hashlib.sha256(stored).hexdigest() == image.sha256 and len(stored) == image.size_bytes
    assert fetch(image.url) == stored, "the presigned URL serves the same bytes"
    assert image.media_type == "image/png" and (image.width, image.height) == (32, 32)
    # Progressive previews: at least one per quarter of the image block, each its own object.
    previews = {s.preview.key for s in snapshots if s.preview.key}
    assert len(previews) >= 4, previews
    assert all(store.exists(key) for key in previews)


def test_same_seed_same_image_and_caption(client: Client) -> None:
    first = client.wait(client.submit(api.text_to_image("a small blue star", seed=3)).job_id)
    second = client.wait(client.submit(api.text_to_image("a small blue star", seed=3)).job_id)
    assert first.state == second.state == SUCCEEDED
    assert first.result.images[0].sha256 == second.result.images[0].sha256
    image = fetch(first.result.images[0].url)
    captioned = client.wait(client.submit(api.caption(image, seed=1)).job_id)
    assert captioned.state == SUCCEEDED, captioned.error
    assert captioned.kind == "caption" and captioned.usage.generated_tokens >= 1
    assert captioned.request.caption.image.object_key.startswith("inputs/"), "inline bytes went to the store"
    by_key = client.wait(client.submit(api.caption(f"key:{first.result.images[0].key}", style="short")).job_id)
    assert by_key.state == SUCCEEDED, by_key.error


@pytest.mark.parametrize(
    "request_",
    [
        api.edit(png(np.zeros((32, 32, 3), np.uint8)), "make it blue"),
        api.segmentation(png(np.zeros((32, 32, 3), np.uint8))),
        api.grounded_generation([("a red circle", (0.0, 0.0, 0.5, 0.5))]),
    ],
    ids=["edit", "segmentation", "grounded_generation"],
)
def test_kinds_the_model_does_not_declare_are_unimplemented(client: Client, request_: jobs_pb2.JobRequest) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        client.submit(request_)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert request_.WhichOneof("kind") in raised.value.details()


def test_async_client(target: str) -> None:
    import asyncio

    from cm3leon_client import AsyncClient

    async def run() -> tuple[jobs_pb2.Job, list[int]]:
        async with AsyncClient(target, "key-a") as client:
            job = await client.submit(api.text_to_image("an async square", seed=2))
            states: list[int] = []
            final = await client.wait(job.job_id, on_update=lambda j: states.append(j.state))
            listed = await client.list(page_size=5)
            assert job.job_id in {j.job_id for j in listed.jobs}
            assert len((await client.search(text="a red circle", k=2)).documents) == 2
            return final, states

    final, states = asyncio.run(run())
    assert final.state == SUCCEEDED and states[-1] == SUCCEEDED and len(final.result.images) == 1
