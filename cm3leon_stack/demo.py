"""The stack demo: start the embedded stack with a model directory, submit one job of every kind the model
supports through the gRPC client, write the outputs and one labelled grid PNG, stop the stack.

    cm3leon stack demo --model models/shapes --out out/demo

Inputs come from the shapes world: each test-split scene gives every kind its request as the training data would
(its detailed caption, rendered image and segmentation map, one of its questions, an edit of it, one of its cells
to infill, its objects with their boxes, a word to draw), sent inline. A kind is demonstrated as soon as the model
declares it and the engine has a handler (`DEMO_REQUESTS` has a request for every kind); under each grid tile is
the request (its kind and every text it carries: prompt, instruction, question, text to draw, objects) and then
the result (state, and the text the job returned), so a reader can judge the picture against what was asked.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from PIL import Image

import cm3leon_client as api
from cm3leon.data.grid import Tile, save_grid
from cm3leon.data.language import detailed_caption, text_render_prompt
from cm3leon.data.questions import qa_pairs
from cm3leon.data.render import object_box, render
from cm3leon.data.tasks import applicable_edit_kinds, propose_edit
from cm3leon.data.world import Scene, Split, World, WorldConfig
from cm3leon_client import Client, download
from cm3leon_client.api import jobs_pb2
from cm3leon_stack.launch import StackKeys, check_model, ensure_memory, new_stack, start_stack
from services.keys import Keys
from services.presence import live_workers
from services.stack import Stack

DEMO_SEED = 0
DEMO_SCENES = 4
DEMO_API_KEY = "demo-key"


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class DemoCase:
    """One demo scene; every kind's request is built from it (and `index`, which varies questions and edits)."""

    scene: Scene
    world: World
    caption: str
    index: int
    seed: int

    @property
    def config(self) -> WorldConfig:
        return self.world.config

    def png(self, segmentation: bool = False) -> bytes:
        rendered = render(self.scene, self.config)
        return png(rendered.segmentation_image if segmentation else rendered.image)

    def norm(self, box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = (value / self.config.image_size for value in box)
        return x0, y0, x1, y1

    def question(self) -> str:
        questions = qa_pairs(self.scene, self.config, random.Random(self.seed))
        return questions[self.index % len(questions)].question

    def edit_instruction(self) -> str:
        kinds = applicable_edit_kinds(self.scene, self.config)
        case = propose_edit(self.world, self.scene, kinds[self.index % len(kinds)], random.Random(self.seed))
        return case.instruction

    def word_prompt(self) -> str:
        word_scene = self.world.sample(random.Random(self.seed), Split.TEST, text=True)
        return text_render_prompt(word_scene, self.config)


# kind -> its request for a demo case.
DEMO_REQUESTS: dict[str, Callable[[DemoCase], jobs_pb2.JobRequest]] = {
    "text_to_image": lambda c: api.text_to_image(c.caption, seed=c.seed, retrieved_k=2),
    "caption": lambda c: api.caption(c.png(), seed=c.seed),
    "visual_question": lambda c: api.visual_question(c.png(), c.question(), seed=c.seed),
    "edit": lambda c: api.edit(c.png(), c.edit_instruction(), seed=c.seed),
    "infill": lambda c: api.infill(
        c.png(), [c.norm(c.config.cell_box(c.scene.objects[0].cell))], c.caption, seed=c.seed
    ),
    "segmentation": lambda c: api.segmentation(c.png()),
    "structure_guided": lambda c: api.structure_guided(c.png(segmentation=True), c.caption, seed=c.seed),
    "grounded_generation": lambda c: api.grounded_generation(
        [(o.describe(), c.norm(object_box(o, c.config))) for o in c.scene.objects],
        f"on a {c.scene.background} background",
        seed=c.seed,
    ),
    "text_rendering": lambda c: api.text_rendering(c.word_prompt(), seed=c.seed),
}


def supported_kinds(stack: Stack) -> list[str]:
    client = redis.Redis(port=stack.redis_port)
    infos = live_workers(client, Keys(stack.namespace)).values()
    return sorted({kind for info in infos for kind in info["kinds"]})


def demo_scenes(world: World, count: int = DEMO_SCENES) -> list[Scene]:
    return world.scenes(DEMO_SEED, Split.TEST, count, text=False)


def request_text(request: jobs_pb2.JobRequest) -> str:
    """The texts a request carries (prompt, instruction, question, objects, ...), "field: value; ...", read
    from the kind's message generically so every kind is described the same way."""
    kind = request.WhichOneof("kind")
    return "; ".join(f"{name}: {value}" for name, value in message_texts(getattr(request, kind))) if kind else ""


def message_texts(message: Message) -> list[tuple[str, str]]:
    texts: list[tuple[str, str]] = []
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING and value:
            texts.append((field.name, ", ".join(value) if field.is_repeated else value))
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.name != "Sampling":
            items = value if field.is_repeated else [value]
            nested = [", ".join(v for _, v in message_texts(item)) for item in items]
            if any(nested):
                texts.append((field.name, "; ".join(n for n in nested if n)))
    return texts


def result_label(job: jobs_pb2.Job) -> str:
    label = f"-> {jobs_pb2.JobState.Name(job.state).removeprefix('JOB_STATE_').lower()}"
    if job.error.code:
        label += f" ({job.error.code})"
    if job.result.text or job.kind in ("caption", "visual_question"):
        label += f": {job.result.text or '(empty text)'}"
    return label


def run_jobs(client: Client, kinds: list[str], world: World, out: Path, scenes: int = DEMO_SCENES) -> list[list[Tile]]:
    """One job of every kind per demo scene; grid rows: the scene, then each kind's first output image (white
    for text-only kinds) labelled with the request ("kind: field: text; ...") and the result ("-> state: text")."""
    rng = random.Random(DEMO_SEED)
    rows: list[list[Tile]] = []
    for index, scene in enumerate(demo_scenes(world, scenes)):
        text = detailed_caption(scene, world.config, rng)
        image = render(scene, world.config).image
        case = DemoCase(scene, world, text, index, DEMO_SEED + index)
        row: list[Tile] = [(image, f"scene {index}: {text}")]
        for kind in kinds:
            request = DEMO_REQUESTS[kind](case)
            job = client.wait(client.submit(request).job_id)
            output = np.full_like(image, 255)
            for number, ref in enumerate(job.result.images):
                path = download(ref, out / f"{kind}-{index}-{number}.png")
                if number == 0:  # the main output (segmentation's second image is the class-id map)
                    output = np.asarray(Image.open(path).convert("RGB"))
            if job.result.text or job.kind in ("caption", "visual_question"):
                (out / f"{kind}-{index}.txt").write_text(job.result.text + "\n")
            asked = request_text(request)
            row.append((output, f"{kind}{': ' + asked if asked else ''}\n{result_label(job)}"))
        rows.append(row)
    return rows


def run_stack_demo(
    model_dir: Path, out: Path, retriever_dir: Path, memory_path: Path, memory_name: str, memory_docs: int
) -> Path:
    check_model(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    ensure_memory(retriever_dir, model_dir / "vq", memory_path, memory_name, memory_docs)
    stack = new_stack(out / "stack", StackKeys({DEMO_API_KEY: "demo"}, DEMO_API_KEY), namespace="demo")
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
