"""Every job kind end to end through gRPC on a tiny instruction-tuned checkpoint (its capabilities.json, written
by `train sft`, declares all of them): a worker and a gateway of their own namespace on the session's Redis and
S3 server, requests built as the stack demo builds them, each kind's result type checked down to the stored
bytes, the demo's grid labelled by kind, and bad inputs refused naming the field."""

from __future__ import annotations

import hashlib
import io
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

import cm3leon_client as api
from cm3leon.data.render import colourise_segmentation, segmentation_legend
from cm3leon.data.world import World
from cm3leon.kinds import JOB_KINDS
from cm3leon_client import Client
from cm3leon_client.api import jobs_pb2
from cm3leon_stack.demo import DEMO_REQUESTS, DemoCase, demo_scenes, run_jobs, supported_kinds, world_for
from services.objectstore import ObjectStore
from services.stack import Stack
from tests.serving.fixtures import API_KEYS
from tests.serving.sft_fixtures import build_tiny_sft_model_dir

# Every test here runs jobs through a second real stack with an instruction-tuned tiny model.
pytestmark = pytest.mark.slow

SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
TEXT_KINDS = ("caption", "visual_question")
# Kinds whose images come out of `generate` image block by image block, so a preview is published while running.
PREVIEWED_KINDS = ("text_to_image", "edit", "segmentation", "structure_guided", "grounded_generation", "text_rendering")


@pytest.fixture(scope="module")
def sft_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's Redis and S3 server (keys and queues are per namespace), this module's worker and gateway."""
    root = tmp_path_factory.mktemp("sft-stack")
    model_dir = build_tiny_sft_model_dir(root / "artifacts")
    sft = Stack(root / "run", namespace="sft", environment={"CM3LEON_API_KEYS": json.dumps(API_KEYS)})
    sft.redis_port, sft.s3_port = stack.redis_port, stack.s3_port
    worker_env = {
        "CM3LEON_MODEL_DIR": str(model_dir),
        "CM3LEON_RETRIEVER_DIR": str(root / "no-retriever"),  # retrieval off: these kinds never use it
        "CM3LEON_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    try:
        sft.start_worker("sft-worker", worker_env)
        sft.start_gateway()
        sft.model_dir = model_dir  # type: ignore[attr-defined]
        yield sft
    finally:
        sft.stop()


@pytest.fixture(scope="module")
def sft_client(sft_stack: Stack) -> Iterator[Client]:
    with Client(f"127.0.0.1:{sft_stack.gateway_port}", "key-a") as client:
        yield client


@pytest.fixture(scope="module")
def world(sft_stack: Stack) -> World:
    return world_for(sft_stack.model_dir)  # type: ignore[attr-defined]


def fetch_image(url: str) -> np.ndarray:
    with urllib.request.urlopen(url) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


@pytest.mark.parametrize("kind", JOB_KINDS)
def test_every_kind_end_to_end(kind: str, sft_stack: Stack, sft_client: Client, world: World) -> None:
    scene = demo_scenes(world, 1)[0]
    case = DemoCase(scene, world, "a large red circle", 0, 11)
    submitted = sft_client.submit(DEMO_REQUESTS[kind](case))
    snapshots = list(sft_client.watch(submitted.job_id))
    job = snapshots[-1]
    assert job.state == SUCCEEDED, job.error
    assert job.kind == kind and job.model_id.startswith("final@") and job.usage.generated_tokens > 0
    assert job.progress.tokens_done == job.progress.tokens_total > 0
    if kind in TEXT_KINDS:
        assert not job.result.images and not job.result.legend
        return
    store, size = ObjectStore.from_settings(sft_stack.settings()), world.config.image_size
    for image in job.result.images:
        stored = store.get(image.key)
        assert hashlib.sha256(stored).hexdigest() == image.sha256 and len(stored) == image.size_bytes
        assert image.media_type == "image/png" and (image.width, image.height) == (size, size)
    assert any(s.preview.key for s in snapshots) == (kind in PREVIEWED_KINDS)
    if kind != "segmentation":
        assert len(job.result.images) == 1 and not job.result.legend
        return
    coloured, class_image = (fetch_image(image.url) for image in job.result.images)
    legend = [(e.label, (e.red, e.green, e.blue)) for e in job.result.legend]
    assert legend == list(segmentation_legend(world.config).items())
    classes = class_image[..., 0]
    assert np.array_equal(coloured, colourise_segmentation(classes, world.config))
    present = {name for index, (name, _) in enumerate(legend) if (classes == index).any()}
    assert set(re.findall(r"(\w+): [\d.]+%", job.result.text)) == present


def test_the_demo_runs_and_labels_every_declared_kind(sft_stack: Stack, sft_client: Client, world: World,
                                                      tmp_path: Path) -> None:
    kinds = supported_kinds(sft_stack)
    assert sorted(kinds) == sorted(JOB_KINDS), "the SFT worker declares every kind"
    [row] = run_jobs(sft_client, kinds, world, tmp_path, scenes=1)
    labels = [label for _, label in row[1:]]
    # Each label: the request ("kind: field: text; ..."), then the result ("-> state[: text]").
    assert [label.splitlines()[0].split(":")[0] for label in labels] == kinds
    assert all(label.splitlines()[-1].startswith("-> succeeded") for label in labels), labels
    for kind in kinds:
        outputs = list(tmp_path.glob(f"{kind}-0*"))
        assert outputs, f"{kind} wrote no output"


def test_edit_guidance_scales_travel_to_the_engine(sft_client: Client, world: World) -> None:
    image = DemoCase(demo_scenes(world, 1)[0], world, "", 0, 0).png()

    def digest(**scales: float) -> str:
        job = sft_client.wait(sft_client.submit(api.edit(image, "remove the red circle", seed=3, **scales)).job_id)
        assert job.state == SUCCEEDED, job.error
        return job.result.images[0].sha256

    default = digest()
    assert digest(text_guidance_scale=7.5, image_guidance_scale=1.5) == default, "the paper's scales are the default"
    assert digest(text_guidance_scale=1.0, image_guidance_scale=0.5) != default
    assert digest(source_copy_bias=0.0) == default, "the tiny model's defaults have no copy bias"
    assert digest(source_copy_bias=20.0) != default


def test_bad_inputs_are_refused_naming_the_field(sft_client: Client, world: World) -> None:
    case = DemoCase(demo_scenes(world, 1)[0], world, "a caption", 0, 1)
    for request, field in (
        (api.edit(case.png(), "make it blue", retrieved_k=2), "request.edit.sampling.retrieved_k"),
        (api.infill(case.png(), [(0.0, 0.0, 0.3, 0.3)], temperature=1.0), "request.infill.sampling"),
        (api.edit(case.png(), "make it blue", source_copy_bias=-1.0), "request.edit.source_copy_bias"),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            sft_client.submit(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in raised.value.details()
    # What only the model's world can judge fails the job with INVALID_ARGUMENT, naming the field.
    job = sft_client.wait(
        sft_client.submit(api.grounded_generation([("a large red hexagon", (0.0, 0.0, 0.3, 0.3))])).job_id
    )
    assert job.state == jobs_pb2.JOB_STATE_FAILED and job.error.code == "INVALID_ARGUMENT"
    assert "objects[0].description" in job.error.message and "hexagon" in job.error.message
