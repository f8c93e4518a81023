"""Text rendering checked by the model's own reading (policies.shapes.caption_check): the scorer accepts exactly the
candidates read back as the word scene asked for, and several candidates switch the check on in the evaluation, the
sweep's defaults and serving."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import detailed_caption, detailed_caption_variants
from cm3leon.data.oracle import Oracle
from cm3leon.decoding import GenerationRequest, SamplingParams
from cm3leon.decoding.defaults import DEFAULTS_FILE, TEXT_RENDERING, TEXT_TO_IMAGE, load_decoding_defaults
from cm3leon.decoding.rerank import continuation_log_likelihoods
from cm3leon.evaluation import image_tasks_eval
from cm3leon.evaluation.task_cases import TaskEvalConfig, build_cases, formatter
from cm3leon.inference.engine import Engine, EngineConfig
from cm3leon.kinds import TextRendering
from cm3leon.policies.shapes.caption_check import AGREES, DISAGREES, CaptionCheckScorer, text_render_check_scorer
from cm3leon.requests import Sampling
from tests.serving.fixtures import record_scorers
from tests.serving.sft_fixtures import build_tiny_sft_model_dir


def test_the_scorer_accepts_only_candidates_read_as_the_word_asked_for(checkpoint: ModelBundle) -> None:
    """The reader is given (each word image's true caption, looked up by its codes) so that the choice is exact."""
    cases = build_cases(checkpoint, TaskEvalConfig(n=6, batch_size=6))
    world, vocab = checkpoint.world, checkpoint.vocab
    wanted, other = 0, next(i for i, w in enumerate(cases.words) if w.key() != cases.words[0].key())
    captions = {tuple(cases.word_images[i].codes): detailed_caption_variants(cases.words[i], world)[0]
                for i in (wanted, other)}
    prompt = formatter(checkpoint).text_render(cases.words[wanted], None).prompt
    scorer = text_render_check_scorer(checkpoint, [prompt], [cases.words[wanted]], graded=False,
                                      describe=lambda images: [captions[tuple(image.codes)] for image in images])
    as_output = [vocab.encode_image(cases.word_images[i].codes) for i in (other, wanted, other)]
    request = GenerationRequest(prompt_ids=prompt, target="image", params=SamplingParams())
    assert scorer(request, prompt, as_output) == [DISAGREES, AGREES, DISAGREES]
    assert scorer(request, prompt, [[vocab.eos_id]]) == [DISAGREES], "no image came out: nothing to read"
    with pytest.raises(ValueError, match="word scenes"):
        text_render_check_scorer(checkpoint, [prompt], [cases.scenes[0]])


def test_the_graded_check_ranks_unread_candidates_by_the_likelihood_of_the_asked_for_caption(
    checkpoint: ModelBundle,
) -> None:
    cases = build_cases(checkpoint, TaskEvalConfig(n=6, batch_size=6))
    world, vocab = checkpoint.world, checkpoint.vocab
    word = cases.words[0]
    others = [i for i, w in enumerate(cases.words) if w.key() != word.key()][:2]
    prompt = formatter(checkpoint).text_render(word, None).prompt
    request = GenerationRequest(prompt_ids=prompt, target="image", params=SamplingParams())
    images = [cases.word_images[i] for i in (0, *others)]
    as_output = [vocab.encode_image(image.codes) for image in images]
    unread = text_render_check_scorer(checkpoint, [prompt], [word], describe=lambda batch: ["?"] * len(batch))
    scores = unread(request, prompt, as_output)
    # Each: the per-token probability of the asked-for word's canonical caption given that image.
    examples = [formatter(checkpoint).caption(image, detailed_caption(word, world)) for image in images]
    totals = continuation_log_likelihoods(checkpoint.model, vocab, [e.prompt for e in examples],
                                          [e.output for e in examples])
    expected = [math.exp(float(t) / len(e.output)) for t, e in zip(totals, examples, strict=True)]
    assert scores == pytest.approx(expected, rel=1e-5)
    assert all(DISAGREES < score < AGREES for score in scores)
    # A candidate read back as the word still outranks every graded one.
    read_last = text_render_check_scorer(
        checkpoint, [prompt], [word],
        describe=lambda batch: ["?"] * (len(batch) - 1) + [detailed_caption_variants(word, world)[0]],
    )
    graded = read_last(request, prompt, as_output)
    assert graded[-1] == AGREES and graded[:-1] == pytest.approx(expected[:-1], rel=1e-5)


def test_several_candidates_decode_through_the_check_and_reading_is_measured(
    checkpoint: ModelBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TaskEvalConfig(n=3, batch_size=3)
    cases, oracle = build_cases(checkpoint, config), Oracle(checkpoint.world)
    built: list[int] = []
    real = image_tasks_eval.text_render_scorer

    def watched(ckpt: Any, prompts: Any, words: Any, retriever: Any) -> Any:
        built.append(len(prompts))
        assert retriever is None, "no retriever given: the model's reading chooses"
        return real(ckpt, prompts, words, retriever)

    monkeypatch.setattr(image_tasks_eval, "text_render_scorer", watched)
    # The model's reading replaced by the true captions: reading_exact must then be 1.
    truth = {tuple(codes.codes): detailed_caption_variants(w, checkpoint.world)[0]
             for codes, w in zip(cases.word_images, cases.words, strict=True)}
    monkeypatch.setattr(image_tasks_eval, "caption_images",
                        lambda ckpt, images, *args: ([truth[tuple(i.codes)] for i in images], 0))
    one = SamplingParams.preset("text_to_image")
    single = image_tasks_eval.evaluate_text_render(checkpoint, cases, config, oracle, one).metrics
    assert built == [] and single["reading_exact"] == 1.0
    slots = {f"{i + 1} of {len(w.word or '')}" for w in cases.words for i in range(len(w.word or ""))}
    assert set(single["letter_accuracy_by_slot"]) == slots
    checked = image_tasks_eval.evaluate_text_render(
        checkpoint, cases, config, oracle, one.replace(num_candidates=2)
    ).metrics
    assert built == [3] and checked["decoding"]["num_candidates"] == 2 and checked["n"] == 3


def test_text_rendering_decodes_as_text_to_image_unless_the_file_says_otherwise(tmp_path: Path) -> None:
    (tmp_path / DEFAULTS_FILE).write_text(json.dumps({TEXT_TO_IMAGE: {"guidance_scale": 2.0}}))
    inherited = load_decoding_defaults(tmp_path)
    assert inherited[TEXT_RENDERING] == inherited[TEXT_TO_IMAGE]
    legacy_key = "text_render"  # the section's name before every kind had one name: loads through LEGACY_KEYS
    own_section = {"guidance_scale": 2.0, "num_candidates": 8}
    (tmp_path / DEFAULTS_FILE).write_text(json.dumps({TEXT_TO_IMAGE: {"guidance_scale": 2.0}, legacy_key: own_section}))
    own = load_decoding_defaults(tmp_path)
    assert own[TEXT_RENDERING] == own[TEXT_TO_IMAGE].replace(num_candidates=8)


def test_text_rendering_jobs_with_several_candidates_are_checked_against_the_word_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = build_tiny_sft_model_dir(tmp_path / "sft")
    scorers = record_scorers(monkeypatch)
    request = TextRendering("AB in blue on black", sampling=Sampling(seed=4))
    Engine.load(directory, EngineConfig.preset("tiny")).run(request)
    assert not any(isinstance(s, CaptionCheckScorer) for s in scorers), "one candidate: nothing to check"
    (directory / DEFAULTS_FILE).write_text(json.dumps({TEXT_RENDERING: {"num_candidates": 2}}))
    first_decode = len(scorers)  # the job's own decode; the check's caption decodes are recorded after it
    Engine.load(directory, EngineConfig.preset("tiny")).run(request)
    scorer = scorers[first_decode]
    assert isinstance(scorer, CaptionCheckScorer)
    (scene,) = scorer.expected.values()
    assert (scene.word, scene.word_colour, scene.background) == ("AB", "blue", "black")
