"""The instruction-tuned job kinds run in process on a tiny SFT checkpoint: each returns its result type (images
of the model's size with previews, text answers, the segmentation map with its class-id map and legend), with
progress to the end, reproducible by seed, and infilling can be cancelled between its steps."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cm3leon.checkpoint import TRAINING_RECORD_FILE
from cm3leon.data.render import colourise_segmentation, object_box, render, segmentation_legend
from cm3leon.data.world import Split, World
from cm3leon.decoding.defaults import (
    CAPTION,
    DEFAULTS_FILE,
    EDIT,
    GROUNDED_GENERATION,
    SEGMENTATION,
    STRUCTURE_GUIDED,
    TEXT_TO_IMAGE,
)
from cm3leon.decoding.params import GUIDED_PLAUSIBILITY, SamplingParams
from cm3leon.inference.engine import Engine, EngineConfig
from cm3leon.inference.task_handlers import shown_answer
from cm3leon.kinds import (
    Caption,
    Edit,
    GroundedGeneration,
    Infill,
    JobRequest,
    Segmentation,
    StructureGuided,
    TextRendering,
    TextToImage,
    VisualQuestion,
)
from cm3leon.requests import EngineResult, GroundedObject, JobCancelled, NormBox, Progress, Sampling
from cm3leon.tasks.decode import infill_plan
from cm3leon.tasks.infill import span_lengths
from tests.serving.fixtures import record_decoded_params
from tests.serving.sft_fixtures import build_tiny_sft_model_dir

PREVIEWS = EngineConfig.preset("tiny").previews_per_image


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(build_tiny_sft_model_dir(tmp_path_factory.mktemp("sft")), EngineConfig.preset("tiny"))


@pytest.fixture(scope="module")
def scene_images(engine: Engine) -> tuple[np.ndarray, np.ndarray]:
    world = engine.formatter.world
    rendered = render(World(world).scenes(0, Split.TEST, 1, text=False)[0], world)
    return rendered.image, rendered.segmentation_image


def run(engine: Engine, request: JobRequest) -> tuple[EngineResult, list[Progress]]:
    events: list[Progress] = []
    result = engine.run(request, progress=events.append)
    done = [e for e in events if e.preview is None]
    assert done and done[-1].tokens_done == done[-1].tokens_total > 0, "progress reaches the end"
    return result, events


def test_image_kinds_return_one_image_with_previews(engine: Engine, scene_images: tuple[np.ndarray, ...]) -> None:
    image, seg_map = scene_images
    size, corner = engine.bundle.image_size, NormBox(0.0, 0.0, 0.33, 0.33)
    requests = [
        Edit(image, "make the red circle blue", sampling=Sampling(seed=1)),
        StructureGuided(seg_map, "a large red circle", sampling=Sampling(seed=2)),
        GroundedGeneration((GroundedObject("large red circle", corner),), sampling=Sampling(seed=3)),
        TextRendering("AB in blue on black", sampling=Sampling(seed=4)),
    ]
    for request in requests:
        result, events = run(engine, request)
        [output] = result.images
        assert output.shape == (size, size, 3) and output.dtype == np.uint8
        previews = [e.preview for e in events if e.preview is not None]
        assert len(previews) == PREVIEWS and np.array_equal(previews[-1], output), type(request).__name__
        assert result.generated_tokens == engine.bundle.vocab.codes_per_image + 1
        again = engine.run(request)
        assert np.array_equal(again.images[0], output), "the same seed gives the same image"


def test_edit_scales_override_the_papers_defaults(engine: Engine, scene_images: tuple[np.ndarray, ...]) -> None:
    image = scene_images[0]
    default = engine.run(Edit(image, "remove the red circle", sampling=Sampling(seed=5))).images[0]
    same = engine.run(Edit(image, "remove the red circle", 7.5, 1.5, sampling=Sampling(seed=5))).images[0]
    other = engine.run(Edit(image, "remove the red circle", 1.0, 0.5, sampling=Sampling(seed=5))).images[0]
    assert np.array_equal(default, same), "text 7.5 / image 1.5 are the defaults (the paper's)"
    assert not np.array_equal(default, other)


def test_guided_kinds_take_the_jobs_guidance_plausibility(
    engine: Engine, scene_images: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    image, seg_map = scene_images
    seen = record_decoded_params(monkeypatch)
    engine.run(Edit(image, "remove the red circle", 1.0, 0.5, sampling=Sampling(seed=5, guidance_plausibility=0.5)))
    engine.run(Edit(image, "remove the red circle", sampling=Sampling(seed=5)))
    engine.run(StructureGuided(seg_map, "a large red circle", sampling=Sampling(seed=2, guidance_plausibility=0.0)))
    engine.run(StructureGuided(seg_map, "a large red circle", sampling=Sampling(seed=2)))
    chosen, unset, structure_off, structure_unset = seen
    assert (chosen.guidance_plausibility, chosen.guidance_scale, chosen.image_guidance_scale) == (0.5, 1.0, 0.5)
    assert unset.guidance_plausibility == structure_unset.guidance_plausibility == GUIDED_PLAUSIBILITY
    assert structure_off.guidance_plausibility == 0.0


def test_edit_and_structure_scales_come_from_the_checkpoints_defaults(
    tmp_path_factory: pytest.TempPathFactory, scene_images: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `eval sweep --write-defaults` chose for editing and structure-guided generation is what jobs that set
    no scale get; a job's own scale still wins."""
    directory = build_tiny_sft_model_dir(tmp_path_factory.mktemp("swept"))
    swept = {EDIT: {"guidance_scale": 1.5, "source_copy_bias": 2.0},
             STRUCTURE_GUIDED: {"guidance_scale": 2.0, "num_candidates": 2}, TEXT_TO_IMAGE: {"guidance_scale": 2.5}}
    (directory / DEFAULTS_FILE).write_text(json.dumps(swept))
    engine = Engine.load(directory, EngineConfig.preset("tiny"))
    image, seg_map = scene_images
    seen = record_decoded_params(monkeypatch)
    engine.run(Edit(image, "remove the red circle", sampling=Sampling(seed=5)))
    engine.run(Edit(image, "remove the red circle", 4.0, sampling=Sampling(seed=5), source_copy_bias=0.0))
    engine.run(StructureGuided(seg_map, "a large red circle", sampling=Sampling(seed=2)))
    grounded = GroundedGeneration((GroundedObject("large red circle", NormBox(0.0, 0.0, 0.3, 0.3)),))
    engine.run(grounded)
    swept_edit, own_edit, swept_structure, inherited_grounded = seen
    paper_image_scale = SamplingParams.preset("edit").image_guidance_scale
    assert (swept_edit.guidance_scale, swept_edit.image_guidance_scale) == (1.5, paper_image_scale)
    assert swept_edit.source_copy_bias == 2.0
    assert (own_edit.guidance_scale, own_edit.source_copy_bias) == (4.0, 0.0)
    assert (swept_structure.guidance_scale, swept_structure.num_candidates) == (2.0, 2)
    # No grounded entry in this file: grounded generation decodes as text->image does.
    assert (inherited_grounded.guidance_scale, inherited_grounded.num_candidates) == (2.5, 1)
    (directory / DEFAULTS_FILE).write_text(json.dumps({**swept, GROUNDED_GENERATION: {"num_candidates": 3}}))
    Engine.load(directory, EngineConfig.preset("tiny")).run(grounded)
    assert seen[-1].num_candidates == 3


def test_infill_refuses_guidance_plausibility(engine: Engine, scene_images: tuple[np.ndarray, ...]) -> None:
    request = Infill(scene_images[0], (NormBox(0.0, 0.0, 0.33, 0.33),), sampling=Sampling(guidance_plausibility=0.5))
    with pytest.raises(ValueError, match="only the seed may be set.*guidance_plausibility"):
        engine.run(request)


def test_segmentation_returns_the_map_its_class_ids_and_the_legend(
    engine: Engine, scene_images: tuple[np.ndarray, ...]
) -> None:
    world = engine.formatter.world
    result, _ = run(engine, Segmentation(scene_images[0]))
    coloured, class_image = result.images
    classes = class_image[..., 0]
    assert (class_image == classes[..., None]).all() and int(classes.max()) < len(result.legend)
    assert np.array_equal(coloured, colourise_segmentation(classes, world)), "the map is the class map, coloured"
    assert result.legend == list(segmentation_legend(world).items())
    shares = dict(re.findall(r"(\w+): ([\d.]+)%", result.text))
    present = {name for index, (name, _) in enumerate(result.legend) if (classes == index).any()}
    assert set(shares) == present and sum(map(float, shares.values())) == pytest.approx(100, abs=0.1 * len(shares))


def test_segmentation_checks_its_map_against_the_caption_when_the_defaults_say_so(
    engine: Engine, scene_images: tuple[np.ndarray, ...], tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = build_tiny_sft_model_dir(tmp_path_factory.mktemp("segcheck"))
    (directory / DEFAULTS_FILE).write_text(json.dumps({SEGMENTATION: {"temperature": 1.0, "num_candidates": 2}}))
    checking = Engine.load(directory, EngineConfig.preset("tiny"))
    greedy, _ = run(engine, Segmentation(scene_images[0]))
    first, _ = run(checking, Segmentation(scene_images[0]))
    second, _ = run(checking, Segmentation(scene_images[0]))
    assert all(np.array_equal(a, b) for a, b in zip(first.images, second.images, strict=True)), "one image, one map"
    # The check decoded a caption too (and maybe redrew the map): more tokens than the greedy map alone.
    assert first.generated_tokens > greedy.generated_tokens >= checking.bundle.vocab.codes_per_image
    assert first.seed == greedy.seed == 0 and first.legend == greedy.legend


def test_visual_questions_answer_in_text(engine: Engine, scene_images: tuple[np.ndarray, ...]) -> None:
    for explain in (False, True):
        request = VisualQuestion(scene_images[0], "how many objects are there?", explain, Sampling(seed=6))
        result, _ = run(engine, request)
        assert not result.images and isinstance(result.text, str) and result.generated_tokens >= 1
        assert result.seed == 6 and result.prompt_tokens > engine.bundle.vocab.codes_per_image


def test_a_model_tuned_with_worked_answers_samples_its_description_as_captions_are(
    engine: Engine, scene_images: tuple[np.ndarray, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worked_dir = tmp_path / "worked"
    shutil.copytree(engine.bundle.directory, worked_dir)
    record = json.loads((worked_dir / TRAINING_RECORD_FILE).read_text())
    record["sft_data_config"]["vqa_worked_answers"] = True
    (worked_dir / TRAINING_RECORD_FILE).write_text(json.dumps(record))
    (worked_dir / DEFAULTS_FILE).write_text(json.dumps({CAPTION: {"temperature": 1.0, "num_candidates": 3}}))
    worked = Engine.load(worked_dir, EngineConfig.preset("tiny"))
    assert worked.bundle.answers_worked and not engine.bundle.answers_worked
    seen = record_decoded_params(monkeypatch)
    result, _ = run(worked, VisualQuestion(scene_images[0], "how many objects are there?", False, Sampling(seed=6)))
    assert (seen[0].num_candidates, seen[0].temperature, seen[0].seed) == (3, 1.0, 6)
    assert isinstance(result.text, str) and result.generated_tokens >= 3  # every candidate's ids are counted


def test_explain_keeps_a_worked_answer_whole_else_only_its_final_answer() -> None:
    worked = "there are 2 circles and 1 star, so the answer is 3"
    assert shown_answer(worked, explain=True) == worked and shown_answer(worked, explain=False) == "3"
    assert shown_answer("red", explain=False) == shown_answer("red", explain=True) == "red"


def test_infill_fills_each_region_in_turn(engine: Engine, scene_images: tuple[np.ndarray, ...]) -> None:
    world, vocab = engine.formatter.world, engine.bundle.vocab
    image = scene_images[0]
    obj = World(world).scenes(0, Split.TEST, 1, text=False)[0].objects[0]
    boxes = [world.cell_box(obj.cell), object_box(obj, world)]
    regions = tuple(NormBox(*(v / world.image_size for v in box)) for box in boxes)
    result, events = run(engine, Infill(image, regions, "a shape", sampling=Sampling(seed=7)))
    [output] = result.images
    assert output.shape == image.shape and result.seed == 7
    steps = sum(len(infill_plan(vocab, span_lengths(box, world.image_size, vocab))) for box in boxes)
    assert result.generated_tokens == steps and events[-1].tokens_total == steps
    again = engine.run(Infill(image, regions, "a shape", sampling=Sampling(seed=8))).images[0]
    assert np.array_equal(again, output), "greedy: the seed changes nothing"
    cancelled: list[int] = []
    with pytest.raises(JobCancelled):
        engine.run(
            Infill(image, regions), progress=lambda p: cancelled.append(p.tokens_done),
            should_cancel=lambda: len(cancelled) >= 3,
        )
    assert max(cancelled) < steps


def test_pretrained_kinds_still_run_on_the_sft_model(engine: Engine, scene_images: tuple[np.ndarray, ...]) -> None:
    assert engine.run(TextToImage("a large red circle", sampling=Sampling(seed=9))).images
    assert engine.run(Caption(scene_images[0], sampling=Sampling(seed=9))).generated_tokens >= 1
