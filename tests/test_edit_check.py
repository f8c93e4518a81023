"""Edits checked against captions (policies.shapes.edit_check): the instruction applied to the source's caption is
the edit's target, the scorer accepts exactly the candidates whose caption shows it, and several candidates switch
the check on in the evaluation and in serving."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import detailed_caption_variants
from cm3leon.data.oracle import Oracle
from cm3leon.data.render import render
from cm3leon.decoding import GenerationRequest, SamplingParams
from cm3leon.decoding.defaults import DEFAULTS_FILE, EDIT
from cm3leon.evaluation.image_tasks_eval import evaluate_edits
from cm3leon.evaluation.task_cases import TaskEvalConfig, build_cases, formatter
from cm3leon.inference.engine import Engine, EngineConfig
from cm3leon.kinds import Edit
from cm3leon.policies.shapes.caption_check import AGREES, DISAGREES, CaptionCheckScorer
from cm3leon.policies.shapes.edit_check import expected_scenes
from cm3leon.requests import Sampling
from cm3leon.tasks.decode import sample_image_outputs
from cm3leon.tokenizers.vocab import ImageCodes
from tests.serving.sft_fixtures import build_tiny_sft_model_dir


def test_the_instruction_applied_to_the_source_caption_is_the_target(checkpoint: ModelBundle) -> None:
    cases = build_cases(checkpoint, TaskEvalConfig(n=20, batch_size=4))
    world = checkpoint.world
    captions = [detailed_caption_variants(case.source, world)[0] for case in cases.edits]
    instructions = [case.instruction for case in cases.edits]
    expected = expected_scenes(captions, instructions, world)
    assert all(e is not None and e.key() == case.target.key() for e, case in zip(expected, cases.edits, strict=True))
    assert expected_scenes(["nothing readable"], instructions[:1], world) == [None]


def test_the_scorer_accepts_only_candidates_whose_caption_shows_the_edit(checkpoint: ModelBundle) -> None:
    """The captioner is given (each scene's true caption, looked up by its codes) so that the choice is exact."""
    cases = build_cases(checkpoint, TaskEvalConfig(n=4, batch_size=4))
    world, case, source = checkpoint.world, cases.edits[0], cases.edit_sources[0]
    target_grid = checkpoint.image_tokenizer.encode(np.stack([render(case.target, world).image]))
    target = ImageCodes.of(target_grid.reshape(-1).tolist())
    captions = {tuple(source.codes): detailed_caption_variants(case.source, world)[0],
                tuple(target.codes): detailed_caption_variants(case.target, world)[0]}
    prompt = formatter(checkpoint).edit(case, source, None).prompt
    scorer = CaptionCheckScorer(checkpoint, {tuple(prompt): case.target},
                             describe=lambda images: [captions[tuple(image.codes)] for image in images])
    vocab = checkpoint.vocab
    as_output = [vocab.encode_image(codes.codes) for codes in (source, target)]
    request = GenerationRequest(prompt_ids=prompt, target="image", params=SamplingParams())
    assert scorer(request, prompt, as_output) == [DISAGREES, AGREES]
    unknown = GenerationRequest(prompt_ids=[1, 2], target="image", params=SamplingParams())
    assert scorer(unknown, [1, 2], as_output) == [DISAGREES, DISAGREES], "no expected scene: nothing agrees"


def test_several_edit_candidates_decode_through_the_check(checkpoint: ModelBundle) -> None:
    config = TaskEvalConfig(n=2, batch_size=2)
    cases = build_cases(checkpoint, config)
    oracle = Oracle(checkpoint.world)
    params = SamplingParams.preset("edit").replace(num_candidates=2)
    checked = evaluate_edits(checkpoint, cases, config, oracle, params).metrics
    assert checked["decoding"]["num_candidates"] == 2 and checked["n"] == 2
    # The chosen edit is one of the candidates, so some candidate is right at least as often as the choice.
    assert checked["exact_scene_accuracy"] <= checked["some_candidate_exact"] <= 1.0


def test_sampled_image_outputs_keep_every_candidate_and_choose_one_of_them(checkpoint: ModelBundle) -> None:
    cases = build_cases(checkpoint, TaskEvalConfig(n=2, batch_size=2))
    fmt = formatter(checkpoint)
    prompts = [fmt.edit(e, src, None).prompt for e, src in zip(cases.edits, cases.edit_sources, strict=True)]
    params = SamplingParams.preset("edit").replace(num_candidates=3)
    samples = sample_image_outputs(checkpoint, prompts, params, batch_size=2, seed=5)
    assert [len(candidates) for candidates in samples.candidates] == [3, 3]
    assert all(
        chosen is not None and chosen.codes in [c.codes for c in candidates if c is not None]
        for chosen, candidates in zip(samples.chosen, samples.candidates, strict=True)
    )
    single = sample_image_outputs(checkpoint, prompts, params.replace(num_candidates=1), batch_size=2, seed=5)
    assert [len(candidates) for candidates in single.candidates] == [1, 1]
    assert single.chosen == [candidates[0] for candidates in single.candidates]


def test_edit_jobs_with_several_candidates_run_the_check(tmp_path: Path) -> None:
    directory = build_tiny_sft_model_dir(tmp_path / "sft")
    (directory / DEFAULTS_FILE).write_text(json.dumps({EDIT: {"num_candidates": 2}}))
    engine = Engine.load(directory, EngineConfig.preset("tiny"))
    stages: list[str] = []
    encoded: list[int] = []
    encode = engine.bundle.encode_image
    engine.bundle.encode_image = lambda image: encoded.append(1) or encode(image)  # type: ignore[method-assign]

    def stage(name: str, attributes: object) -> contextlib.AbstractContextManager:
        stages.append(name)
        return contextlib.nullcontext()

    image = np.full((engine.bundle.image_size, engine.bundle.image_size, 3), 255, dtype=np.uint8)
    result = engine.run(Edit(image, "remove the red circle", sampling=Sampling(seed=3)), stage=stage)
    assert "edit_check" in stages and result.images[0].shape == (engine.bundle.image_size, engine.bundle.image_size, 3)
    assert len(encoded) == 1, "the source is encoded once, for the prompt and the check"
