"""Edits pooled with redraws of their expected scene (cm3leon.tasks.edit_check): the redraw prompt asks for exactly
the planned scene, both prompts of an edit are judged against it, the kept candidate is the best scored of the pool
(ties keep the direct sample), an edit without a plan is never redrawn, and the edit job decodes the same way."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import cm3leon_client as api
from cm3leon.data.tasks import grounded_spec_of_scene
from cm3leon.data.world import Scene
from cm3leon.decoding import GenerationRequest, SamplingParams, Scorer
from cm3leon.decoding.defaults import DEFAULTS_FILE, EDIT, EDIT_REDRAW, load_decoding_defaults
from cm3leon.evaluation.decoder_setup import EvalCheckpoint
from cm3leon.evaluation.task_cases import TaskEvalConfig, build_cases, formatter
from cm3leon.inference import Edit, Sampling
from cm3leon.inference.engine import Engine, EngineConfig
from cm3leon.inference.task_prompts import task_setup
from cm3leon.retrieval.config import RetrieverConfig
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks import edit_check
from cm3leon.tasks.edit_check import EditPlan, EditSettings, edit_scorer, redraw_prompt, redraw_wins, sample_edits
from cm3leon.tasks.parsing import grounded_spec
from cm3leon.tokenizers.text import TextTokenizer
from cm3leon.tokenizers.vocab import ImageCodes
from services.convert import request_to_domain
from tests.serving.fixtures import record_decodes
from tests.serving.sft_fixtures import build_tiny_sft_model_dir


def tiny_retriever(checkpoint: EvalCheckpoint) -> Retriever:
    config = replace(RetrieverConfig.preset("tiny"), image_size=checkpoint.world.image_size)
    return Retriever.build(config, checkpoint.vocab.text_tokenizer)


def scores_of(
    scorer: Scorer, prompt: list[int], codes: list[ImageCodes | None], checkpoint: EvalCheckpoint
) -> list[float]:
    """The scorer's scores of already sampled image candidates, as `generate` computes them."""
    ids = [checkpoint.vocab.encode_image(c.codes) for c in codes if c is not None]
    return [float(s) for s in scorer(GenerationRequest(prompt_ids=prompt, target="image"), prompt, ids)]


def test_a_redraw_prompt_asks_for_the_expected_scene(checkpoint: EvalCheckpoint) -> None:
    cases = build_cases(checkpoint, TaskEvalConfig(n=12, batch_size=4))
    fmt, world = formatter(checkpoint), checkpoint.world
    for case in cases.edits:
        parsed = grounded_spec(redraw_prompt(fmt, case.target), checkpoint.vocab, world)
        assert parsed == grounded_spec_of_scene(case.target, world) and parsed is not None
        assert parsed.scene == case.target


def test_both_prompts_of_an_edit_are_judged_against_its_plan(checkpoint: EvalCheckpoint) -> None:
    scene = Scene("white")
    plan = EditPlan(prompts=[[1, 2], [3, 4]], expected=[scene, None], redraw_prompts=[[5, 6], None])
    assert plan.expected_by_prompt() == {(1, 2): scene, (5, 6): scene, (3, 4): None}
    assert redraw_wins(0.1, 0.2) and not redraw_wins(0.2, 0.2) and not redraw_wins(0.3, 0.2)
    assert not redraw_wins(0.0, None), "no redraw: the direct sample"


def test_the_kept_edit_is_the_best_scored_of_direct_samples_and_redraws(
    checkpoint: EvalCheckpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = build_cases(checkpoint, TaskEvalConfig(n=3, batch_size=3))
    fmt, retriever = formatter(checkpoint), tiny_retriever(checkpoint)
    known = [cases.edits[0].target, None, cases.edits[2].target]
    monkeypatch.setattr(edit_check, "expected_edits", lambda *args: known)
    prompts = [fmt.edit(e, s, None).prompt for e, s in zip(cases.edits, cases.edit_sources, strict=True)]
    instructions = [case.instruction for case in cases.edits]
    defaults = load_decoding_defaults(checkpoint.directory)
    settings = EditSettings(
        direct=defaults[EDIT].replace(num_candidates=2), redraw=defaults[EDIT_REDRAW].replace(num_candidates=1),
        plan_caption=SamplingParams.preset("greedy_text"),
    )
    samples = sample_edits(checkpoint, prompts, cases.edit_sources, instructions, settings, 3, 7, retriever)
    assert samples.plan is not None and samples.plan.expected == known
    assert [len(r) for r in samples.redraws] == [1, 0, 1], "one redraw per planned edit, none without a plan"
    assert samples.redrawn[1] is False and samples.chosen[1] == samples.direct.chosen[1]
    scorer = edit_scorer(checkpoint, samples.plan, retriever)
    for i in (0, 2):
        direct = scores_of(scorer, prompts[i], samples.direct.candidates[i], checkpoint)
        redraw = scores_of(scorer, samples.plan.redraw_prompts[i], samples.redraws[i], checkpoint)  # type: ignore[arg-type]
        assert samples.direct.scores[i] == pytest.approx(max(direct), abs=1e-5)
        assert samples.redrawn[i] == (max(redraw) > max(direct) + 1e-6)
        kept = samples.redraws[i][0] if samples.redrawn[i] else samples.direct.chosen[i]
        assert samples.chosen[i] == kept
    # One direct sample: nothing is planned or redrawn.
    single = sample_edits(checkpoint, prompts, cases.edit_sources, instructions,
                          replace(settings, direct=settings.direct.replace(num_candidates=1)), 3, 7, retriever)
    assert single.plan is None and not any(single.redrawn) and single.redraws == [[], [], []]


def test_edit_jobs_pool_a_redraw_of_the_planned_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = build_tiny_sft_model_dir(tmp_path / "sft")
    defaults = {EDIT: {"num_candidates": 2}, EDIT_REDRAW: {"num_candidates": 3}}
    (directory / DEFAULTS_FILE).write_text(json.dumps(defaults))
    retriever = Retriever.build(RetrieverConfig.preset("tiny"), TextTokenizer.load(directory))
    engine = Engine(directory, EngineConfig.preset("tiny"), retriever=retriever)
    decoded = record_decodes(monkeypatch)
    image = np.full((engine.image_size, engine.image_size, 3), 255, dtype=np.uint8)
    request = Edit(image, "remove the red circle", sampling=Sampling(seed=3))
    monkeypatch.setattr(edit_check, "expected_edits", lambda *args: [None])
    engine.run(request)
    requests, _ = decoded[-1]
    assert len(requests) == 1, "no plan: the direct samples alone"
    planned = Scene("white")
    monkeypatch.setattr(edit_check, "expected_edits", lambda *args: [planned])
    result = engine.run(request)
    requests, results = decoded[-1]
    assert len(requests) == 2 and [r.params.num_candidates for r in requests] == [2, 3]
    assert requests[1].params.seed == requests[0].params.seed == 3
    assert requests[1].prompt_ids == redraw_prompt(task_setup(engine).formatter, planned)
    kept = 1 if results[1].score > results[0].score else 0
    assert np.array_equal(result.images[0], np.asarray(results[kept].images[0]))
    # The API's `redraw` travels to the handler: false keeps the edit to the source's own codes.
    for sent, requests_decoded in ((None, 2), (True, 2), (False, 1)):
        converted = request_to_domain(api.edit("key:inputs/source.png", "remove the red circle", redraw=sent, seed=3))
        assert isinstance(converted, Edit) and converted.redraw is (sent is not False)
        engine.run(replace(converted, image=image))
        assert len(decoded[-1][0]) == requests_decoded, sent
