"""The retriever choosing among edits and rendered words (cm3leon.retrieval.rerank.ExpectedCaptionScorer): the shipped
retriever prefers the render of the scene a request should show over near misses, and with a retriever loaded the
evaluation, the sweep and serving choose that way (without one, by the model's own captions, as before)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import detailed_caption, detailed_caption_variants
from cm3leon.data.oracle import Oracle
from cm3leon.data.render import render
from cm3leon.data.tasks import make_edit
from cm3leon.data.world import Scene, Split, World, WorldConfig
from cm3leon.decoding import GenerationRequest, SamplingParams, WeightedSum, continuation_log_likelihoods
from cm3leon.decoding.defaults import DEFAULTS_FILE, GROUNDED_GENERATION, TEXT_RENDERING, load_decoding_defaults
from cm3leon.evaluation import image_tasks_eval
from cm3leon.evaluation.task_cases import TaskEvalConfig, build_cases, formatter
from cm3leon.inference.engine import Engine, EngineConfig
from cm3leon.kinds import GroundedGeneration, TextRendering
from cm3leon.policies.shapes import edit_check
from cm3leon.policies.shapes.caption_check import (
    READING_RETRIEVER_WEIGHT,
    CaptionCheckScorer,
    ExpectedCaptionLikelihoodScorer,
    text_render_scorer,
)
from cm3leon.policies.shapes.edit_check import EditSettings, edit_scorer
from cm3leon.requests import GroundedObject, NormBox, Sampling
from cm3leon.retrieval.config import RetrieverConfig
from cm3leon.retrieval.rerank import ExpectedCaptionScorer
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.decode import decode_codes
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.text import TextTokenizer
from cm3leon.tokenizers.vocab import Vocabulary, VocabularyConfig
from tests.serving.fixtures import record_scorers
from tests.serving.sft_fixtures import build_tiny_sft_model_dir

SHAPES = Path(__file__).resolve().parents[1] / "models" / "shapes"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def fails_if_called(request: GenerationRequest, prompt_ids: list[int], candidates: list[list[int]]) -> list[float]:
    raise AssertionError("a request with an expected caption must be scored by the retriever")


@pytest.fixture(scope="module")
def shipped() -> tuple[Retriever, ImageTokenizer, Vocabulary, World]:
    image_tokenizer = ImageTokenizer.from_pretrained(SHAPES / "vq")
    vq = image_tokenizer.config
    vocab = Vocabulary(TextTokenizer.load(SHAPES), VocabularyConfig(codebook_size=vq.codebook_size, image_grid=vq.grid))
    return Retriever.from_pretrained(SHAPES / "retriever"), image_tokenizer, vocab, World(WorldConfig.preset("shapes"))


def shipped_scores(shipped: Any, instruction: str, expected: Scene, drawn: list[Scene]) -> list[float]:
    """The shipped retriever's scores of renders of `drawn` as the candidates of an `instruction` prompt whose
    expected scene is `expected` (the prompt's own words must not matter: the fallback fails if called)."""
    retriever, image_tokenizer, vocab, world = shipped
    images = np.stack([render(scene, world.config).image for scene in drawn])
    codes = image_tokenizer.encode(images).view(len(drawn), -1).tolist()
    candidates = [vocab.encode_image(c) for c in codes]
    prompt = vocab.encode_document([instruction], eos=False) + [vocab.break_id]
    captions = {tuple(prompt): detailed_caption(expected, world.config)}
    scorer = ExpectedCaptionScorer(retriever, vocab, image_tokenizer, captions, fallback=fails_if_called)
    return scorer(GenerationRequest(prompt_ids=prompt, target="image"), prompt, candidates)


def one_letter_changed(word: Scene, rng: random.Random) -> Scene:
    assert word.word is not None
    index = rng.randrange(len(word.word))
    letter = rng.choice([c for c in LETTERS if c != word.word[index]])
    return replace(word, word=word.word[:index] + letter + word.word[index + 1 :])


def test_the_word_asked_for_outranks_words_one_letter_off(shipped: Any) -> None:
    """The prompt is an instruction ("draw ..."), not a caption: the scorer reads the expected caption instead."""
    world = shipped[3]
    rng = random.Random(5)
    wins = 0
    for _ in range(12):
        word = world.sample(rng, Split.TEST, text=True)
        misses = [one_letter_changed(word, rng) for _ in range(3)]
        scores = shipped_scores(shipped, f'draw "{word.word}"', word, [*misses[:2], word, misses[2]])
        wins += int(np.argmax(scores)) == 2
    assert wins >= 10


def test_the_edited_scene_outranks_the_unedited_source(shipped: Any) -> None:
    world = shipped[3]
    rng = random.Random(7)
    wins = 0
    for _ in range(20):
        case = make_edit(world, rng, Split.TEST)
        expected = edit_check.expected_scenes(
            [detailed_caption_variants(case.source, world.config)[0]], [case.instruction], world.config
        )[0]
        assert expected is not None and expected.key() == case.target.key()
        scores = shipped_scores(shipped, case.instruction, expected, [case.source, case.target])
        wins += scores[1] > scores[0]
    assert wins >= 17


def test_the_grounded_scene_asked_for_outranks_its_objects_in_other_cells(shipped: Any) -> None:
    """Grounded prompts' words name no positions; the asked-for scene's caption does, so a sample with an object in
    the wrong cell loses."""
    world = shipped[3]
    rng = random.Random(11)
    wins = 0
    for _ in range(12):
        scene = world.sample(rng, Split.TEST)
        moved_object = rng.choice(scene.objects)
        empty = scene.empty_cells(world.config)
        moved = scene.with_objects(
            (*(o for o in scene.objects if o is not moved_object), replace(moved_object, cell=rng.choice(empty)))
        )
        scores = shipped_scores(shipped, "a grounded prompt", scene, [moved, scene])
        wins += scores[1] > scores[0]
    assert wins >= 10


def tiny_retriever(checkpoint: ModelBundle) -> Retriever:
    config = replace(RetrieverConfig.preset("tiny"), image_size=checkpoint.world.image_size)
    return Retriever.build(config, checkpoint.vocab.text_tokenizer)


def test_a_request_without_an_expected_scene_falls_back(checkpoint: ModelBundle) -> None:
    cases = build_cases(checkpoint, TaskEvalConfig(n=2, batch_size=2))
    vocab = checkpoint.vocab
    prompt = formatter(checkpoint).edit(cases.edits[0], cases.edit_sources[0], None).prompt
    scorer = ExpectedCaptionScorer(tiny_retriever(checkpoint), vocab, checkpoint.image_tokenizer, {tuple(prompt): None},
                                   fallback=lambda request, prompt_ids, candidates: [7.0] * len(candidates))
    candidates = [vocab.encode_image(codes.codes) for codes in cases.edit_sources]
    for ids in (prompt, [vocab.bos_id]):  # expected scene unknown; prompt never seen
        assert scorer(GenerationRequest(prompt_ids=ids, target="image"), ids, candidates) == [7.0, 7.0]


def test_with_a_retriever_the_choice_is_the_retrievers_and_without_one_the_caption_checks(
    checkpoint: ModelBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = build_cases(checkpoint, TaskEvalConfig(n=3, batch_size=3))
    fmt, world, retriever = formatter(checkpoint), checkpoint.world, tiny_retriever(checkpoint)
    word_prompts = [fmt.text_render(word, None).prompt for word in cases.words]
    assert isinstance(text_render_scorer(checkpoint, word_prompts, cases.words, None), CaptionCheckScorer)
    words = text_render_scorer(checkpoint, word_prompts, cases.words, retriever)
    assert isinstance(words, WeightedSum)
    (_, reading), (weight, similarity) = words.parts
    assert isinstance(reading, ExpectedCaptionLikelihoodScorer) and isinstance(similarity, ExpectedCaptionScorer)
    assert weight == READING_RETRIEVER_WEIGHT
    assert list(similarity.expected.values()) == [detailed_caption(word, world) for word in cases.words]
    with pytest.raises(ValueError, match="word scenes"):
        text_render_scorer(checkpoint, word_prompts[:1], cases.scenes[:1], retriever)
    # Edits: the expected scene comes from the source's caption; an unknown one leaves the first sample.
    sources, instructions = cases.edit_sources, [case.instruction for case in cases.edits]
    prompts = [fmt.edit(e, s, None).prompt for e, s in zip(cases.edits, sources, strict=True)]
    known = [cases.edits[0].target, None, cases.edits[2].target]
    monkeypatch.setattr(edit_check, "expected_edits", lambda *args: known)
    settings = EditSettings.from_defaults(load_decoding_defaults(checkpoint.directory))
    plan = edit_check.plan_edits(checkpoint, prompts, sources, instructions, settings, 3)
    assert isinstance(edit_scorer(checkpoint, plan, None), CaptionCheckScorer)
    edits = edit_scorer(checkpoint, plan, retriever)
    assert isinstance(edits, ExpectedCaptionScorer)
    assert [edits.expected[tuple(p)] for p in prompts] == [
        detailed_caption(known[0], world), None, detailed_caption(known[2], world)
    ]
    redraws = [plan.redraw_prompts[0], plan.redraw_prompts[2]]  # a redraw is judged against the same scene
    assert [edits.expected[tuple(p)] for p in redraws] == [  # type: ignore[arg-type]
        detailed_caption(known[0], world), detailed_caption(known[2], world)
    ]
    candidates = [checkpoint.vocab.encode_image(codes.codes) for codes in sources]
    unknown = GenerationRequest(prompt_ids=prompts[1], target="image")
    assert edits(unknown, prompts[1], candidates) == [0.0, 0.0, 0.0], "no expected scene: the first sample"


def test_a_word_is_scored_by_the_models_reading_plus_the_weighted_retriever_similarity(
    checkpoint: ModelBundle,
) -> None:
    cases = build_cases(checkpoint, TaskEvalConfig(n=3, batch_size=3))
    fmt, vocab, world, retriever = formatter(checkpoint), checkpoint.vocab, checkpoint.world, tiny_retriever(checkpoint)
    word = cases.words[0]
    prompt = fmt.text_render(word, None).prompt
    scorer = text_render_scorer(checkpoint, [prompt], [word], retriever)
    candidates = [vocab.encode_image(image.codes) for image in cases.word_images] + [[vocab.eos_id]]
    scores = scorer(GenerationRequest(prompt_ids=prompt, target="image"), prompt, candidates[:3])
    caption = detailed_caption(word, world)
    examples = [fmt.caption(image, caption) for image in cases.word_images]
    totals = continuation_log_likelihoods(checkpoint.model, vocab, [e.prompt for e in examples],
                                          [e.output for e in examples])
    reading = [float(t) / len(e.output) for t, e in zip(totals, examples, strict=True)]
    similarity = retriever.similarity([caption], decode_codes(checkpoint, cases.word_images))[0]
    expected = [r + READING_RETRIEVER_WEIGHT * float(s) for r, s in zip(reading, similarity, strict=True)]
    assert scores == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # A candidate with no whole image cannot be read: it ranks last.
    assert ExpectedCaptionLikelihoodScorer(checkpoint, {tuple(prompt): word})(
        GenerationRequest(prompt_ids=prompt, target="image"), prompt, candidates[-2:]
    ) == [pytest.approx(reading[-1], rel=1e-4), -math.inf]
    with pytest.raises(ValueError, match="positive weight"):
        WeightedSum(((0.0, scorer),))


def test_the_evaluation_reports_what_chose(checkpoint: ModelBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    config = TaskEvalConfig(n=2, batch_size=2)
    cases, oracle, retriever = build_cases(checkpoint, config), Oracle(checkpoint.world), tiny_retriever(checkpoint)
    built: list[Any] = []
    real = image_tasks_eval.text_render_scorer

    def watched(*args: Any) -> Any:
        built.append(real(*args))
        return built[-1]

    monkeypatch.setattr(image_tasks_eval, "text_render_scorer", watched)
    two = SamplingParams.preset("text_to_image").replace(num_candidates=2)
    chosen = image_tasks_eval.evaluate_text_render(checkpoint, cases, config, oracle, two, retriever).metrics
    assert chosen["chosen_by"] == "retriever" and isinstance(built[-1], WeightedSum)
    read = image_tasks_eval.evaluate_text_render(checkpoint, cases, config, oracle, two).metrics
    assert read["chosen_by"] == "caption check" and isinstance(built[-1], CaptionCheckScorer)
    single = image_tasks_eval.evaluate_text_render(checkpoint, cases, config, oracle, two.replace(num_candidates=1))
    assert "chosen_by" not in single.metrics
    edits = SamplingParams.preset("edit").replace(num_candidates=2)
    metrics = image_tasks_eval.evaluate_edits(checkpoint, cases, config, oracle, edits, retriever).metrics
    assert metrics["chosen_by"] == "retriever" and metrics["exact_scene_accuracy"] <= metrics["some_candidate_exact"]
    scenes: list[Any] = []
    real_expected = image_tasks_eval.expected_caption_scorer

    def watched_expected(ckpt: Any, chooser: Any, prompts: Any, expected: Any, fallback: Any) -> Any:
        scenes.extend(expected)
        return real_expected(ckpt, chooser, prompts, expected, fallback)

    monkeypatch.setattr(image_tasks_eval, "expected_caption_scorer", watched_expected)
    grounded = image_tasks_eval.evaluate_grounded(checkpoint, cases, config, oracle, two, retriever=retriever)
    assert grounded.metrics["chosen_by"] == "retriever" and scenes == cases.scenes
    plain = image_tasks_eval.evaluate_grounded(checkpoint, cases, config, oracle, two)
    assert plain.metrics["chosen_by"] == "reranker" and len(scenes) == len(cases.scenes)


def test_text_rendering_jobs_are_chosen_by_the_engines_retriever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = build_tiny_sft_model_dir(tmp_path / "sft")
    (directory / DEFAULTS_FILE).write_text(json.dumps({TEXT_RENDERING: {"num_candidates": 2}}))
    scorers = record_scorers(monkeypatch)
    retriever = Retriever.build(RetrieverConfig.preset("tiny"), TextTokenizer.load(directory))
    engine = Engine.load(directory, EngineConfig.preset("tiny"), retriever=retriever)
    result = engine.run(TextRendering("AB in blue on black", sampling=Sampling(seed=4)))
    scorer = scorers[-1]
    assert isinstance(scorer, WeightedSum) and result.images[0].shape[:2] == (engine.bundle.image_size,) * 2
    (caption,) = scorer.parts[1][1].expected.values()  # type: ignore[attr-defined]
    assert caption is not None and '"AB"' in caption and "blue" in caption and "black" in caption


def test_grounded_jobs_are_chosen_against_the_scene_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = build_tiny_sft_model_dir(tmp_path / "sft")
    (directory / DEFAULTS_FILE).write_text(json.dumps({GROUNDED_GENERATION: {"num_candidates": 2}}))
    scorers = record_scorers(monkeypatch)
    request = GroundedGeneration((GroundedObject("large red circle", NormBox(0.0, 0.0, 0.3, 0.3)),),
                                 sampling=Sampling(seed=2))
    Engine.load(directory, EngineConfig.preset("tiny")).run(request)
    assert scorers[-1] is None, "no retriever: the model's likelihood reranks"
    retriever = Retriever.build(RetrieverConfig.preset("tiny"), TextTokenizer.load(directory))
    Engine.load(directory, EngineConfig.preset("tiny"), retriever=retriever).run(request)
    scorer = scorers[-1]
    assert isinstance(scorer, ExpectedCaptionScorer)
    (caption,) = scorer.expected.values()
    assert caption is not None and "large red circle" in caption and "top left" in caption
