"""The stack demo's grid shows each request under its tile: the kind and every text the request carries (prompt,
instruction, question, objects, text to draw), then the result."""

from __future__ import annotations

import random

import cm3leon_client as api
from cm3leon.data.language import detailed_caption
from cm3leon.data.world import World, WorldConfig
from cm3leon_client.api import jobs_pb2
from cm3leon_stack.demo import DEMO_REQUESTS, DEMO_SEED, DemoCase, demo_scenes, request_text, result_label


def test_every_kind_is_described_by_its_texts() -> None:
    world = World(WorldConfig.preset("shapes"))
    scene = demo_scenes(world, 1)[0]
    text = detailed_caption(scene, world.config, random.Random(DEMO_SEED))
    case = DemoCase(scene, world, text, 0, DEMO_SEED)
    described = {kind: request_text(build(case)) for kind, build in DEMO_REQUESTS.items()}
    assert described["text_to_image"] == f"prompt: {text}"
    assert described["visual_question"] == f"question: {case.question()}"
    assert described["edit"] == f"instruction: {case.edit_instruction()}"
    assert described["text_rendering"] == f"text: {case.word_prompt()}"
    assert described["structure_guided"] == f"caption: {text}"
    assert described["grounded_generation"].startswith("objects: " + scene.objects[0].describe())
    assert described["grounded_generation"].endswith(f"prompt: on a {scene.background} background")
    assert described["caption"] == described["segmentation"] == "", "image-only requests: the scene tile shows it"


def test_the_result_line_has_state_error_and_text() -> None:
    failed = jobs_pb2.Job(state=jobs_pb2.JOB_STATE_FAILED, kind="edit", error=jobs_pb2.JobError(code="INTERNAL"))
    assert result_label(failed) == "-> failed (INTERNAL)"
    answered = jobs_pb2.Job(state=jobs_pb2.JOB_STATE_SUCCEEDED, kind="visual_question")
    answered.result.text = "3"
    assert result_label(answered) == "-> succeeded: 3"
    assert request_text(api.caption(b"\x89PNG", style="short")) == ""
