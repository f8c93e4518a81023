"""The stack demo: start the embedded stack with a model directory, submit one job of every kind the model
supports through the gRPC client, write the outputs and one labelled grid PNG, stop the stack.

    cm3leon stack demo --model models/shapes --out out/demo

Inputs come from the shapes world: test-split scenes give the text->image prompts (their detailed captions)
and the images of the image-input kinds (rendered, sent inline). A kind is demonstrated as soon as the model
declares it and the engine has a handler (`DEMO_REQUESTS` has a request for every kind).
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis
from PIL import Image

from cm3leon.data.grid import Tile, save_grid
from cm3leon.data.language import detailed_caption
from cm3leon.data.render import render
from cm3leon.data.world import Scene, Split, World, WorldConfig
from services import client as api
from services.api import jobs_pb2
from services.client import Client, download
from services.keys import Keys
from services.stack import Stack

DEMO_SEED = 0
DEMO_SCENES = 4
DEMO_API_KEY = "demo-key"


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# kind -> request for a scene (its detailed caption and rendered image).
DEMO_REQUESTS: dict[str, Callable[[str, np.ndarray, int], jobs_pb2.JobRequest]] = {
    "text_to_image": lambda text, image, seed: api.text_to_image(text, seed=seed, retrieved_k=2),
    "caption": lambda text, image, seed: api.caption(png(image), seed=seed),
    "visual_question": lambda text, image, seed: api.visual_question(png(image), "how many objects are there?"),
    "edit": lambda text, image, seed: api.edit(png(image), "make the background black", seed=seed),
    "infill": lambda text, image, seed: api.infill(png(image), [(0.0, 0.0, 0.34, 0.34)], seed=seed),
    "segmentation": lambda text, image, seed: api.segmentation(png(image)),
    "structure_guided": lambda text, image, seed: api.structure_guided(png(image), text, seed=seed),
    "grounded_generation": lambda text, image, seed: api.grounded_generation(
        [("a red circle", (0.0, 0.0, 0.33, 0.33))], seed=seed
    ),
    "text_rendering": lambda text, image, seed: api.text_rendering("CM3", seed=seed),
}


def supported_kinds(stack: Stack) -> list[str]:
    client = redis.Redis(port=stack.redis_port)
    infos = [json.loads(raw) for raw in client.mget(client.keys(Keys(stack.namespace).workers_pattern())) if raw]
    return sorted({kind for info in infos for kind in info["kinds"]})


def demo_scenes(world: World) -> list[Scene]:
    return world.scenes(DEMO_SEED, Split.TEST, DEMO_SCENES, text=False)


def run_jobs(client: Client, kinds: list[str], world: World, out: Path) -> list[list[Tile]]:
    rng = random.Random(DEMO_SEED)
    rows: list[list[Tile]] = []
    for index, scene in enumerate(demo_scenes(world)):
        text = detailed_caption(scene, world.config, rng)
        image = render(scene, world.config).image
        row: list[Tile] = [(image, f"scene {index}: {text}")]
        for kind in kinds:
            job = client.wait(client.submit(DEMO_REQUESTS[kind](text, image, DEMO_SEED + index)).job_id)
            label = f"{kind}: {jobs_pb2.JobState.Name(job.state).removeprefix('JOB_STATE_').lower()}"
            if job.error.code:
                label += f" ({job.error.code})"
            output = np.full_like(image, 255)
            for number, ref in enumerate(job.result.images):
                path = download(ref, out / f"{kind}-{index}-{number}.png")
                output = np.asarray(Image.open(path).convert("RGB"))
            if job.result.text or job.kind in ("caption", "visual_question"):
                label += f": {job.result.text or '(empty text)'}"
                (out / f"{kind}-{index}.txt").write_text(job.result.text + "\n")
            row.append((output, label))
        rows.append(row)
    return rows


def run_stack_demo(
    model_dir: Path, out: Path, retriever_dir: Path, memory_path: Path, memory_name: str, memory_docs: int
) -> Path:
    from cm3leon.cli.stack import check_model, ensure_memory, start_stack

    check_model(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    ensure_memory(retriever_dir, model_dir / "vq", memory_path, memory_name, memory_docs)
    stack = Stack(out / "stack", namespace="demo", environment={"CM3LEON_API_KEYS": json.dumps({DEMO_API_KEY: "demo"})})
    try:
        start_stack(stack, model_dir, retriever_dir, memory_path, memory_name, port=0)
        kinds = supported_kinds(stack)
        print(f"the model runs: {', '.join(kinds)}")
        world = world_for(model_dir)
        with Client(f"127.0.0.1:{stack.gateway_port}", DEMO_API_KEY) as client:
            rows = run_jobs(client, kinds, world, out)
        grid = save_grid(rows, out / "stack_demo.png", title=f"cm3leon stack demo: {model_dir}")
    finally:
        stack.stop()
    print(f"outputs in {out}/, grid: {grid}")
    return grid


def world_for(model_dir: Path) -> World:
    """The shapes world drawn at the size of the model's VQ tokenizer's images."""
    image_size = json.loads((model_dir / "vq" / "config.json").read_text())["image_size"]
    return World(dataclasses.replace(WorldConfig.preset("shapes"), image_size=image_size))
