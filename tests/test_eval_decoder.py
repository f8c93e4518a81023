"""Decoder evaluations (text->image, captioning, perplexity), the decoding sweep and serving defaults, BLEU, and
the decode benchmark, on a tiny randomly initialised checkpoint: the plumbing and report shapes are checked on
it, and the metrics themselves on ground truth and on deliberately wrong inputs (so they can fail)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pretrain_helpers import tiny_data_config, tiny_image_tokenizer, tiny_model, tiny_vocabulary
from typer.testing import CliRunner

from cm3leon.bench.decode import DecodeBenchConfig, bench_decode
from cm3leon.bundle import ModelBundle
from cm3leon.checkpoint import save_checkpoint
from cm3leon.cli import app
from cm3leon.data.language import detailed_caption, detailed_caption_variants
from cm3leon.data.oracle import Oracle
from cm3leon.data.render import render
from cm3leon.data.world import Split, split_of
from cm3leon.decoding import SamplingParams
from cm3leon.decoding.defaults import (
    CAPTION,
    DEFAULTS_FILE,
    EDIT,
    EDIT_REDRAW,
    GROUNDED_GENERATION,
    SEGMENTATION,
    STRUCTURE_GUIDED,
    TEXT_RENDERING,
    TEXT_TO_IMAGE,
    load_decoding_defaults,
    preset_defaults,
    save_decoding_defaults,
)
from cm3leon.evaluation.bleu import corpus_bleu
from cm3leon.evaluation.caption_eval import CaptionEvalConfig, evaluate_captioning, score_captions
from cm3leon.evaluation.decoder_setup import eval_scenes
from cm3leon.evaluation.image_tasks_eval import evaluate_edits, evaluate_segmentation, evaluate_text_render
from cm3leon.evaluation.perplexity_eval import PerplexityEvalConfig, evaluate_heldout_perplexity
from cm3leon.evaluation.sweep import CONTRASTIVE, SweepConfig, best_defaults, run_sweep
from cm3leon.evaluation.t2i_eval import T2IEvalConfig, score_generated_images
from cm3leon.evaluation.t2i_task_eval import evaluate_t2i
from cm3leon.evaluation.task_cases import TaskEvalConfig, build_cases
from cm3leon.evaluation.text_tasks_eval import _questions, _vqa_hit, evaluate_questions

SCENE_METRICS = ("exact_scene_accuracy", "single_object_exact", "multi_object_exact", "attribute_accuracy")



@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny checkpoint (random weights, world-trained BPE, seeded VQ), as `train pretrain` writes."""
    root = tmp_path_factory.mktemp("decoder")
    image_tokenizer = tiny_image_tokenizer()
    vocab = tiny_vocabulary(image_tokenizer)
    model = tiny_model(vocab).eval()
    with torch.no_grad():  # the zero-initialised output projections would make every logit equal
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return save_checkpoint(root / "final", model, vocab, image_tokenizer.save_pretrained(root / "vq"))


@pytest.fixture(scope="module")
def checkpoint(checkpoint_dir: Path) -> ModelBundle:
    return ModelBundle.load(checkpoint_dir, require_vq=True)


def assert_scene_metrics(metrics: dict[str, object]) -> None:
    for key in SCENE_METRICS:
        value = metrics[key]
        assert isinstance(value, float) and 0.0 <= value <= 1.0, (key, value)
    assert metrics["exact_scene_accuracy"] <= metrics["attribute_accuracy"]


# --- metrics on given inputs ------------------------------------------------------------------------------------


def test_bleu4_on_hand_computed_examples() -> None:
    # 1-gram 5/6, 2-gram 3/5, 3-gram 2/4, 4-gram 1/3, equal lengths (no brevity penalty).
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert corpus_bleu(["the cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx(expected)
    assert corpus_bleu(["The cat, sat."], [["the cat , sat ."]]) == pytest.approx(1.0)  # case and punctuation
    # Every n-gram matches but the hypothesis is 4 words against 6: brevity penalty exp(1 - 6/4).
    assert corpus_bleu(["the cat sat on"], [["the cat sat on the mat"]]) == pytest.approx(math.exp(-0.5))
    # The closest reference sets the length: the 4-word reference, so no penalty.
    assert corpus_bleu(["the cat sat on"], [["the cat sat on the mat", "the cat sat on"]]) == pytest.approx(1.0)
    # Clipping: "the" counts at most as often as in a reference; no matching bigram -> 0.
    assert corpus_bleu(["the the the the"], [["the cat"]]) == 0.0
    # Corpus level: n-gram counts are pooled over sentences before the precisions are taken.
    pooled = corpus_bleu(["a b c d", "a b c e"], [["a b c d"], ["a b c d"]])
    assert pooled == pytest.approx((7 / 8 * 5 / 6 * 3 / 4 * 1 / 2) ** 0.25)
    with pytest.raises(ValueError):
        corpus_bleu(["a"], [])


def test_image_scoring_is_one_on_ground_truth_and_zero_on_wrong_scenes() -> None:
    world = tiny_data_config().world()
    oracle = Oracle(world)
    scenes = eval_scenes(world, Split.TEST, 9, seed=3)
    assert [len(s.objects) for s in scenes] == [1, 2, 3] * 3
    assert all(split_of(s, world) is Split.TEST for s in scenes)
    images = np.stack([render(scene, world).image for scene in scenes])

    perfect, parsed = score_generated_images(oracle, scenes, images)
    assert parsed == scenes
    for key in SCENE_METRICS:
        assert perfect[key] == 1.0, key

    wrong, _ = score_generated_images(oracle, scenes, np.roll(images, 1, axis=0))  # each image shows another scene
    assert wrong["exact_scene_accuracy"] == wrong["single_object_exact"] == wrong["multi_object_exact"] == 0.0
    assert wrong["attribute_accuracy"] < 1.0

    # Half right: the single-object scenes keep their images, the others get a blank background.
    half = [image if len(s.objects) == 1 else np.full_like(image, 128) for s, image in zip(scenes, images, strict=True)]
    mixed, _ = score_generated_images(oracle, scenes, half)
    assert mixed["single_object_exact"] == 1.0 and mixed["multi_object_exact"] == 0.0
    assert mixed["exact_scene_accuracy"] == pytest.approx(1 / 3)


def test_vqa_question_kinds_are_balanced_within_every_object_count(checkpoint: ModelBundle) -> None:
    scenes = eval_scenes(checkpoint.world, Split.TEST, 360, seed=0)
    questions = _questions(SimpleNamespace(scenes=scenes), checkpoint, seed=0, reasoning=False)  # type: ignore[arg-type]
    for objects in (1, 2, 3):
        kinds = Counter(qa.kind for qa, s in zip(questions, scenes, strict=True) if len(s.objects) == objects)
        # Single-object scenes can be asked six kinds (not left_of); each count gets near-equal shares of each.
        assert len(kinds) >= 6, (objects, kinds)
        assert max(kinds.values()) - min(kinds.values()) <= 0.5 * max(kinds.values()), (objects, kinds)
    assert _vqa_hit("blue", "blue") and _vqa_hit("a blue star at the center, so the answer is top left", "top left")
    assert not _vqa_hit("a blue star, so the answer is red", "blue") and not _vqa_hit("a blue star", "blue")


def test_vqa_of_a_model_tuned_with_worked_answers_decodes_in_two_steps(
    checkpoint_dir: Path, checkpoint: ModelBundle, tmp_path: Path
) -> None:
    worked_dir = tmp_path / "worked"
    shutil.copytree(checkpoint_dir, worked_dir)
    (worked_dir / "training.json").write_text(json.dumps({"sft_data_config": {"vqa_worked_answers": True}}))
    caption_defaults = {"caption": {"temperature": 1.0, "num_candidates": 2}}
    (worked_dir / "decoding_defaults.json").write_text(json.dumps(caption_defaults))
    config = TaskEvalConfig.preset("quick")
    worked = ModelBundle.load(worked_dir, require_vq=True)
    decoding = evaluate_questions(worked, build_cases(worked, config), config, reasoning=False).metrics["decoding"]
    assert decoding["two_step"] is True and decoding["num_candidates"] == 2  # type: ignore[index]
    plain = evaluate_questions(checkpoint, build_cases(checkpoint, config), config, reasoning=False)
    assert "two_step" not in plain.metrics["decoding"]  # type: ignore[operator]


def test_caption_scoring_is_one_on_ground_truth_and_zero_on_wrong_captions() -> None:
    world = tiny_data_config().world()
    scenes = eval_scenes(world, Split.TEST, 6, seed=1)
    truth = [detailed_caption(scene, world) for scene in scenes]
    perfect, parsed = score_captions(truth, scenes, world)
    assert parsed == scenes
    assert perfect["exact_scene_accuracy"] == perfect["attribute_accuracy"] == perfect["bleu4"] == 1.0
    assert perfect["parse_rate"] == 1.0
    # Any paraphrase is a reference too.
    paraphrases = [detailed_caption_variants(scene, world)[-1] for scene in scenes]
    assert score_captions(paraphrases, scenes, world)[0]["bleu4"] == pytest.approx(1.0)

    wrong, _ = score_captions(truth[1:] + truth[:1], scenes, world)
    assert wrong["exact_scene_accuracy"] == 0.0 and wrong["bleu4"] < 1.0
    garbage, parsed = score_captions(["blue blue blue"] * len(scenes), scenes, world)
    assert garbage["parse_rate"] == 0.0 and garbage["exact_scene_accuracy"] == 0.0
    assert garbage["attribute_accuracy"] == 0.0


# --- defaults ---------------------------------------------------------------------------------------------------


def test_decoding_defaults_fall_back_to_presets_and_round_trip(tmp_path: Path) -> None:
    assert load_decoding_defaults(tmp_path) == preset_defaults()
    assert preset_defaults()[TEXT_TO_IMAGE] == SamplingParams.preset("text_to_image")
    chosen = preset_defaults()[TEXT_TO_IMAGE].replace(temperature=0.7, guidance_scale=5.0, seed=123)
    path = save_decoding_defaults(tmp_path, {TEXT_TO_IMAGE: chosen}, {"split": "val"})
    record = json.loads(path.read_text())
    assert record[TEXT_TO_IMAGE] == {"temperature": 0.7, "guidance_scale": 5.0}  # only changes, never the seed
    loaded = load_decoding_defaults(tmp_path)
    assert loaded[TEXT_TO_IMAGE] == chosen.replace(seed=None)
    assert loaded[CAPTION] == preset_defaults()[CAPTION]
    path.write_text(json.dumps({TEXT_TO_IMAGE: {"guidance": 2.0}}))
    with pytest.raises(ValueError, match="unknown sampling fields"):
        load_decoding_defaults(tmp_path)
    path.write_text(json.dumps({TEXT_TO_IMAGE: {"top_p": 1.5}}))
    with pytest.raises(ValueError, match="top_p"):
        load_decoding_defaults(tmp_path)


def test_grounded_generation_decodes_as_text_to_image_unless_the_file_says_otherwise(tmp_path: Path) -> None:
    chosen = preset_defaults()[TEXT_TO_IMAGE].replace(guidance_scale=2.0, cdk_k=1)
    path = save_decoding_defaults(tmp_path, {TEXT_TO_IMAGE: chosen}, {})
    assert load_decoding_defaults(tmp_path)[GROUNDED_GENERATION] == chosen  # saved as text->image's when not given
    record = json.loads(path.read_text())
    del record[GROUNDED_GENERATION], record[EDIT_REDRAW]  # a file written before either had its own entry
    path.write_text(json.dumps(record))
    assert load_decoding_defaults(tmp_path)[GROUNDED_GENERATION] == chosen
    assert load_decoding_defaults(tmp_path)[EDIT_REDRAW] == chosen  # through grounded generation's
    save_decoding_defaults(tmp_path, {TEXT_TO_IMAGE: chosen, GROUNDED_GENERATION: chosen.replace(num_candidates=8)}, {})
    loaded = load_decoding_defaults(tmp_path)
    assert loaded[GROUNDED_GENERATION].num_candidates == 8 and loaded[TEXT_TO_IMAGE].num_candidates == 1
    assert loaded[EDIT_REDRAW] == loaded[GROUNDED_GENERATION]  # an edit's redraw is a grounded prompt
    save_decoding_defaults(tmp_path, {GROUNDED_GENERATION: chosen, EDIT_REDRAW: chosen.replace(num_candidates=4)}, {})
    loaded = load_decoding_defaults(tmp_path)
    assert loaded[EDIT_REDRAW].num_candidates == 4 and loaded[GROUNDED_GENERATION].num_candidates == 1


# --- evaluations on a tiny checkpoint ---------------------------------------------------------------------------


def test_t2i_eval_reports_every_method_and_split(checkpoint: ModelBundle, tmp_path: Path) -> None:
    config = T2IEvalConfig.preset("quick", n=4, compositional_fraction=0.5)
    report = evaluate_t2i(checkpoint, config, grid_path=tmp_path / "t2i.png")
    for method in ("plain", "cfg"):
        assert_scene_metrics(report[method])
        assert report[method]["n"] == 4 and report[method]["images_per_s"] > 0
        assert_scene_metrics(report["test_compositional"][method])
        assert report["test_compositional"][method]["n"] == 2
    assert report["decoding"]["plain"]["method"] == "sample" and report["decoding"]["cfg"]["method"] == "cfg"
    assert report["decoding"]["cfg"]["guidance_scale"] == preset_defaults()[TEXT_TO_IMAGE].guidance_scale
    assert (tmp_path / "t2i.png").stat().st_size > 0
    assert (tmp_path / "t2i_test_compositional.png").exists()
    json.dumps(report)  # the report is plain JSON


def test_t2i_eval_runs_cdk_and_pooled_behind_the_methods_flag(checkpoint: ModelBundle) -> None:
    config = T2IEvalConfig.preset("quick", n=1, methods=("cdk", "pooled"), compositional=False)
    report = evaluate_t2i(checkpoint, config)
    for method in ("cdk", "pooled"):
        assert 0.0 <= report[method]["exact_scene_accuracy"] <= report[method]["attribute_accuracy"] <= 1.0
        assert report[method]["multi_object_exact"] is None  # one scene, one object: nothing to average
    assert report["cdk"]["n"] == report["pooled"]["n"] == 1 and "test_compositional" not in report
    assert report["decoding"]["cdk"]["method"] == "cdk"
    assert report["decoding"]["pooled"]["num_candidates"] == SamplingParams.preset("pooled").num_candidates
    with pytest.raises(ValueError, match="methods"):
        T2IEvalConfig(methods=("beam",))
    wide = evaluate_t2i(checkpoint, dataclasses.replace(config, methods=("pooled",), pooled_candidates=3))
    assert wide["decoding"]["pooled"]["num_candidates"] == 3
    for invalid in (T2IEvalConfig, TaskEvalConfig):
        with pytest.raises(ValueError, match="at least 2 candidates"):
            invalid(pooled_candidates=1)


def test_t2i_eval_with_a_retriever_reports_fd_and_reranks_pooled_candidates(checkpoint: ModelBundle) -> None:
    from dataclasses import replace

    from cm3leon.retrieval.config import RetrieverConfig
    from cm3leon.retrieval.retriever import Retriever

    config_32 = replace(RetrieverConfig.preset("tiny"), image_size=checkpoint.image_tokenizer.config.image_size)
    retriever = Retriever.build(config_32, checkpoint.vocab.text_tokenizer)
    config = T2IEvalConfig.preset("quick", n=3, methods=("cfg", "pooled"), compositional=False)
    report = evaluate_t2i(checkpoint, config, retriever=retriever)
    for method in ("cfg", "pooled"):
        assert isinstance(report[method]["fd"], float) and report[method]["fd"] >= 0.0
    assert report["reranker"] == "retriever text-image similarity"
    assert evaluate_t2i(checkpoint, replace(config, methods=("cfg",)))["cfg"]["fd"] is None


def test_t2i_eval_with_a_memory_adds_cfg_with_retrieved_documents(
    checkpoint: ModelBundle, tmp_path: Path
) -> None:
    from dataclasses import replace

    from cm3leon.data.world import Split, World
    from cm3leon.evaluation.retrieval_prefix import memory_prefix, open_memory
    from cm3leon.retrieval.config import RetrieverConfig
    from cm3leon.retrieval.corpus import build_memory
    from cm3leon.retrieval.documents import world_documents
    from cm3leon.retrieval.retriever import Retriever

    config_32 = replace(RetrieverConfig.preset("tiny"), image_size=checkpoint.image_tokenizer.config.image_size)
    retriever = Retriever.build(config_32, checkpoint.vocab.text_tokenizer)
    store = open_memory(tmp_path / "qdrant", "tiny", retriever)
    documents = world_documents(World(checkpoint.world), 16, split=Split.TRAIN)
    build_memory(store, retriever, documents, image_tokenizer=checkpoint.image_tokenizer, progress_bar=False)
    seen: list[list[str]] = []
    prefix = memory_prefix(store, retriever, checkpoint.vocab, checkpoint.model.config.max_seq_len, k=1)

    def recording_prefix(captions: list[str]) -> list[list[int]]:
        seen.append(list(captions))
        return prefix(captions)

    config = T2IEvalConfig.preset("quick", n=2, methods=("cfg",), compositional=False)
    report = evaluate_t2i(checkpoint, config, retriever=retriever, retrieval=recording_prefix)
    store.close()
    assert set(report) >= {"cfg", "cfg_retrieval"} and report["cfg_retrieval"]["n"] == 2
    assert 0.0 <= report["cfg_retrieval"]["attribute_accuracy"] <= 1.0 and report["cfg_retrieval"]["fd"] >= 0.0
    assert len(seen) == 1 and len(seen[0]) == 2  # the prompts' captions were the queries


def test_caption_eval_reports_accuracy_and_bleu(checkpoint: ModelBundle, tmp_path: Path) -> None:
    report = evaluate_captioning(checkpoint, CaptionEvalConfig.preset("quick"), grid_path=tmp_path / "captions.png")
    assert_scene_metrics(report)
    assert 0.0 <= report["bleu4"] <= 1.0 and 0.0 <= report["parse_rate"] <= 1.0
    assert report["tokens_per_s"] > 0 and report["decoding"]["temperature"] == 0.0
    # The budget is the longest reference caption plus <eos>: a random model runs into it, never past it.
    assert report["decoding"]["max_new_tokens"] > 1
    assert (tmp_path / "captions.png").stat().st_size > 0


def test_perplexity_report_has_text_and_image_sections(checkpoint: ModelBundle) -> None:
    files_before = sorted(checkpoint.directory.parent.rglob("*"))
    report = evaluate_heldout_perplexity(checkpoint, PerplexityEvalConfig.preset("quick"))
    assert sorted(checkpoint.directory.parent.rglob("*")) == files_before  # no cache left in a model directory
    for modality in ("text", "image", "all"):
        for split in ("val", "test"):
            section = report[modality][split]
            # A random model is about uniform over the vocabulary: loss near log(V), perplexity its exponential.
            assert abs(section["loss"] - math.log(checkpoint.vocab.size)) < 1.0, (modality, split, section)
            assert section["perplexity"] == pytest.approx(math.exp(section["loss"]))
    assert report["targets"]["val"] > 0 and report["targets"]["test"] > 0


def test_sweep_chooses_on_val_and_its_choice_becomes_the_default(checkpoint_dir: Path, tmp_path: Path) -> None:
    directory = Path(shutil.copytree(checkpoint_dir, tmp_path / "ckpt"))
    checkpoint = ModelBundle.load(directory, require_vq=True)
    config = SweepConfig.preset("quick")
    report = run_sweep(checkpoint, config)
    assert report["split"] == "val"
    runs = report[TEXT_TO_IMAGE]["runs"]
    assert [(r["temperature"], r["guidance_scale"]) for r in runs] == [(1.0, 1.0), (1.0, 3.0)]
    best = report[TEXT_TO_IMAGE]["best"]
    assert best["exact_scene_accuracy"] == max(r["exact_scene_accuracy"] for r in runs)
    assert set(report[TEXT_TO_IMAGE]["exact_scene_accuracy"]["temperature=1"]) == {"scale=1", "scale=3"}

    save_decoding_defaults(directory, best_defaults(report), {"split": "val"})
    defaults = load_decoding_defaults(directory)
    assert defaults[TEXT_TO_IMAGE].guidance_scale == best["guidance_scale"]
    assert defaults[CAPTION].temperature == report[CAPTION]["best"]["temperature"]
    # The evaluations now decode with the sweep's choice.
    t2i = evaluate_t2i(checkpoint, T2IEvalConfig.preset("quick", n=1, methods=("cfg",), compositional=False))
    assert t2i["decoding"]["cfg"]["guidance_scale"] == best["guidance_scale"]


def test_structure_sweep_crosses_scale_with_reranked_candidates(checkpoint_dir: Path, tmp_path: Path) -> None:
    directory = Path(shutil.copytree(checkpoint_dir, tmp_path / "ckpt"))
    checkpoint = ModelBundle.load(directory, require_vq=True)
    chosen: list[int] = []

    def first_candidate(request: object, prompt: object, candidates: list[list[int]]) -> list[float]:
        chosen.append(len(candidates))
        return [1.0] + [0.0] * (len(candidates) - 1)

    config = SweepConfig.preset("quick", structure_scales=(3.0,), structure_candidates=(1, 2))
    report = run_sweep(checkpoint, config, reranker=first_candidate)
    section = report[STRUCTURE_GUIDED]
    assert [(run["guidance_scale"], run["num_candidates"]) for run in section["runs"]] == [(3.0, 1), (3.0, 2)]
    assert set(section["exact_scene_accuracy"]) == {"scale=3,candidates=1", "scale=3,candidates=2"}
    assert chosen and set(chosen) == {2}, "the sweep's reranker chose among the two candidates of each map"
    best = dict(section["best"], num_candidates=2)  # as if two candidates had won
    save_decoding_defaults(directory, best_defaults({**report, STRUCTURE_GUIDED: {**section, "best": best}}), {})
    assert load_decoding_defaults(directory)[STRUCTURE_GUIDED].num_candidates == 2


def test_grounded_sweep_chooses_candidates_at_the_text_to_image_setting(checkpoint_dir: Path, tmp_path: Path) -> None:
    directory = Path(shutil.copytree(checkpoint_dir, tmp_path / "ckpt"))
    checkpoint = ModelBundle.load(directory, require_vq=True)
    seen: list[int] = []

    def last_candidate(request: object, prompt: object, candidates: list[list[int]]) -> list[float]:
        seen.append(len(candidates))
        return [0.0] * (len(candidates) - 1) + [1.0]

    config = SweepConfig.preset("quick", grounded_candidates=(1, 2))
    report = run_sweep(checkpoint, config, reranker=last_candidate)
    section = report[GROUNDED_GENERATION]
    assert [run["num_candidates"] for run in section["runs"]] == [1, 2]
    assert set(section["exact_scene_accuracy"]) == {"candidates=1", "candidates=2"}
    assert 2 in seen, "the sweep's reranker chose among the grounded candidates"
    best = {**section["best"], "num_candidates": 2}
    defaults = best_defaults({**report, GROUNDED_GENERATION: {**section, "best": best}})
    assert defaults[GROUNDED_GENERATION] == defaults[TEXT_TO_IMAGE].replace(num_candidates=2)
    without = best_defaults({k: v for k, v in report.items() if k != GROUNDED_GENERATION})
    assert without[GROUNDED_GENERATION] == defaults[TEXT_TO_IMAGE]



def test_text_render_sweep_chooses_candidates_at_the_text_to_image_setting(
    checkpoint_dir: Path, tmp_path: Path
) -> None:
    directory = Path(shutil.copytree(checkpoint_dir, tmp_path / "ckpt"))
    config = SweepConfig.preset("quick", text_render_candidates=(1, 2))
    report = run_sweep(ModelBundle.load(directory, require_vq=True), config)
    section = report[TEXT_RENDERING]
    assert [run["num_candidates"] for run in section["runs"]] == [1, 2]
    assert set(section["exact_word_accuracy"]) == {"candidates=1", "candidates=2"}
    best = {**section["best"], "num_candidates": 2}
    defaults = best_defaults({**report, TEXT_RENDERING: {**section, "best": best}})
    assert defaults[TEXT_RENDERING] == defaults[TEXT_TO_IMAGE].replace(num_candidates=2)
    without = best_defaults({k: v for k, v in report.items() if k != TEXT_RENDERING})
    assert without[TEXT_RENDERING] == defaults[TEXT_TO_IMAGE]
    save_decoding_defaults(directory, defaults, {})
    assert load_decoding_defaults(directory)[TEXT_RENDERING].num_candidates == 2

def test_text_render_reports_how_often_some_candidate_draws_the_word(checkpoint_dir: Path) -> None:
    checkpoint = ModelBundle.load(checkpoint_dir, require_vq=True)
    config = TaskEvalConfig(n=2, batch_size=2)
    cases, oracle = build_cases(checkpoint, config), Oracle(checkpoint.world)
    params = SamplingParams.preset("text_to_image").replace(num_candidates=2)
    checked = evaluate_text_render(checkpoint, cases, config, oracle, params).metrics
    # The kept sample is one of the candidates: some candidate is right at least as often as the choice.
    assert checked["exact_word_accuracy"] <= checked["some_candidate_exact_word"] <= 1.0
    single = evaluate_text_render(checkpoint, cases, config, oracle, params.replace(num_candidates=1)).metrics
    assert "some_candidate_exact_word" not in single, "one sample: nothing to choose among"


def test_caption_sweep_crosses_temperature_with_reranked_candidates(checkpoint_dir: Path, tmp_path: Path) -> None:
    directory = Path(shutil.copytree(checkpoint_dir, tmp_path / "ckpt"))
    checkpoint = ModelBundle.load(directory, require_vq=True)
    config = SweepConfig.preset("quick", caption_temperatures=(0.0, 1.0), caption_candidates=(1, 2))
    report = run_sweep(checkpoint, config)
    section = report[CAPTION]
    # Greedy decoding runs with one candidate only: its candidates would all be the same caption.
    assert [(run["temperature"], run["num_candidates"]) for run in section["runs"]] == [(0.0, 1), (1.0, 1), (1.0, 2)]
    assert set(section["exact_scene_accuracy"]) == {
        "temperature=0,candidates=1", "temperature=1,candidates=1", "temperature=1,candidates=2"
    }
    best = dict(section["best"], num_candidates=2, temperature=1.0)  # as if reranking had won
    save_decoding_defaults(directory, best_defaults({**report, CAPTION: {**section, "best": best}}), {"split": "val"})
    assert load_decoding_defaults(directory)[CAPTION].num_candidates == 2
    captions = evaluate_captioning(ModelBundle.load(directory, require_vq=True), CaptionEvalConfig.preset("quick", n=2))
    assert captions["decoding"]["num_candidates"] == 2 and captions["decoding"]["temperature"] == 1.0


def test_segmentation_sweep_runs_each_setting_and_the_evaluation_decodes_with_its_choice(
    checkpoint_dir: Path, tmp_path: Path
) -> None:
    directory = Path(shutil.copytree(checkpoint_dir, tmp_path / "ckpt"))
    checkpoint = ModelBundle.load(directory, require_vq=True)
    report = run_sweep(checkpoint, SweepConfig.preset("quick"))
    section = report[SEGMENTATION]
    assert [(run["temperature"], run["num_candidates"]) for run in section["runs"]] == [(0.0, 1), (1.0, 2)]
    assert set(section["miou"]) == {"temperature=0,candidates=1", "temperature=1,candidates=2"}
    assert section["best"]["miou"] == max(run["miou"] for run in section["runs"])
    best = dict(section["best"], temperature=1.0, num_candidates=2)  # as if the caption check had won
    save_decoding_defaults(directory, best_defaults({**report, SEGMENTATION: {**section, "best": best}}), {})
    chosen = load_decoding_defaults(directory)[SEGMENTATION]
    assert (chosen.temperature, chosen.num_candidates) == (1.0, 2)
    config = TaskEvalConfig.preset("quick", n=2)
    bundle = ModelBundle.load(directory, require_vq=True)
    metrics = evaluate_segmentation(bundle, build_cases(checkpoint, config), config).metrics
    assert metrics["decoding"]["num_candidates"] == 2 and "caption_check" in metrics
    assert 0.0 <= metrics["caption_check"]["resampled"] <= metrics["caption_check"]["readable_captions"]
    # Greedy only (the preset): the chosen maps are the greedy maps.
    greedy = evaluate_segmentation(checkpoint, build_cases(checkpoint, config), config,
                                   SamplingParams.preset("segmentation")).metrics
    assert greedy["miou"] == greedy["greedy"]["miou"] and "caption_check" not in greedy


def test_edit_sweep_tries_the_caption_check_at_the_best_scale_and_saves_its_candidates(
    checkpoint_dir: Path, tmp_path: Path
) -> None:
    directory = Path(shutil.copytree(checkpoint_dir, tmp_path / "ckpt"))
    bundle = ModelBundle.load(directory, require_vq=True)
    report = run_sweep(bundle, SweepConfig.preset("quick", edit_candidates=(1, 2)))
    runs = report[EDIT]["runs"]
    assert [run["num_candidates"] for run in runs] == [1, 2]
    assert (runs[1]["guidance_scale"], runs[1]["source_copy_bias"]) == (runs[0]["guidance_scale"],
                                                                      runs[0]["source_copy_bias"])
    assert set(report[EDIT]["exact_scene_accuracy"]) == {"scale=7.5,candidates=1", "scale=7.5,candidates=2"}
    best = dict(report[EDIT]["best"], num_candidates=2)  # as if the check had won
    save_decoding_defaults(directory, best_defaults({**report, EDIT: {**report[EDIT], "best": best}}), {})
    assert load_decoding_defaults(directory)[EDIT].num_candidates == 2


def test_sweep_plausibility_axis_names_its_cells_and_its_choice_is_saved(checkpoint_dir: Path, tmp_path: Path) -> None:
    directory = Path(shutil.copytree(checkpoint_dir, tmp_path / "ckpt"))
    checkpoint = ModelBundle.load(directory, require_vq=True)
    config = SweepConfig.preset("quick", guidance_scales=(3.0,), plausibilities=(0.0, 1.0))
    report = run_sweep(checkpoint, config)
    runs = report[TEXT_TO_IMAGE]["runs"]
    assert [r["guidance_plausibility"] for r in runs] == [0.0, 1.0]
    assert set(report[TEXT_TO_IMAGE]["exact_scene_accuracy"]["temperature=1"]) == {
        "scale=3,plausibility=0", "scale=3,plausibility=1"
    }
    best = report[TEXT_TO_IMAGE]["best"]
    save_decoding_defaults(directory, best_defaults(report), {"split": "val"})
    assert load_decoding_defaults(directory)[TEXT_TO_IMAGE].guidance_plausibility == best["guidance_plausibility"]


def test_sweep_chooses_cdk_k_on_val_and_saves_it_with_the_t2i_defaults(checkpoint_dir: Path, tmp_path: Path) -> None:
    directory = Path(shutil.copytree(checkpoint_dir, tmp_path / "ckpt"))
    report = run_sweep(ModelBundle.load(directory, require_vq=True), SweepConfig.preset("quick", cdk_ks=(1, 5)))
    section = report[CONTRASTIVE]
    assert [run["cdk_k"] for run in section["runs"]] == [1, 5]
    assert set(section["exact_scene_accuracy"]) == {"k=1", "k=5"}
    best = section["best"]
    assert best["exact_scene_accuracy"] == max(run["exact_scene_accuracy"] for run in section["runs"])
    save_decoding_defaults(directory, best_defaults(report), {"split": "val"})
    assert load_decoding_defaults(directory)[TEXT_TO_IMAGE].cdk_k == best["cdk_k"]


def test_sweep_chooses_edit_and_structure_scales_on_val_and_the_evaluations_use_them(
    checkpoint_dir: Path, tmp_path: Path
) -> None:
    directory = Path(shutil.copytree(checkpoint_dir, tmp_path / "ckpt"))
    checkpoint = ModelBundle.load(directory, require_vq=True)
    report = run_sweep(checkpoint, SweepConfig.preset(
        "quick", edit_scales=(1.5, 7.5), edit_copy_biases=(0.0, 2.0), structure_scales=(2.0, 3.0)
    ))
    assert [(run["guidance_scale"], run["source_copy_bias"]) for run in report[EDIT]["runs"]] == [
        (1.5, 0.0), (1.5, 2.0), (7.5, 0.0), (7.5, 2.0)
    ]
    assert "scale=7.5,copy=2" in report[EDIT]["exact_scene_accuracy"]
    for task, scales in ((EDIT, [1.5, 7.5]), (STRUCTURE_GUIDED, [2.0, 3.0])):
        assert set(run["guidance_scale"] for run in report[task]["runs"]) == set(scales)
        assert report[task]["best"]["guidance_scale"] in scales
    save_decoding_defaults(directory, best_defaults(report), {"split": "val"})
    defaults = load_decoding_defaults(directory)
    assert defaults[EDIT].guidance_scale == report[EDIT]["best"]["guidance_scale"]
    assert defaults[EDIT].source_copy_bias == report[EDIT]["best"]["source_copy_bias"]
    assert defaults[STRUCTURE_GUIDED].guidance_scale == report[STRUCTURE_GUIDED]["best"]["guidance_scale"]
    cases = build_cases(checkpoint, TaskEvalConfig.preset("quick", n=1))
    oracle = Oracle(checkpoint.world)
    edits = evaluate_edits(checkpoint, cases, TaskEvalConfig.preset("quick", n=1), oracle).metrics
    assert edits["decoding"]["guidance_scale"] == report[EDIT]["best"]["guidance_scale"]


def test_sweep_never_uses_the_test_split(checkpoint: ModelBundle) -> None:
    world = checkpoint.world
    assert all(split_of(s, world) is Split.VAL for s in eval_scenes(world, "val", 6, seed=0))
    with pytest.raises(ValueError, match="sweep uses val"):
        T2IEvalConfig(split="val")


def test_cli_commands_write_reports(checkpoint_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    directory = str(shutil.copytree(checkpoint_dir, tmp_path / "ckpt"))
    common = ["--checkpoint", directory, "--threads", "1"]
    t2i = runner.invoke(app, ["eval", "t2i", *common, "--n", "2", "--no-compositional", "--methods", "cfg",
                              "--json", str(tmp_path / "t2i.json")])
    assert t2i.exit_code == 0, t2i.output
    assert "exact_scene_accuracy" in json.loads((tmp_path / "t2i.json").read_text())["cfg"]
    assert (tmp_path / "t2i.png").exists()
    sweep = runner.invoke(app, ["eval", "sweep", *common, "--n", "1", "--temperatures", "1.0", "--scales", "2",
                                "--caption-temperatures", "0.7", "--caption-candidates", "2", "--write-defaults"])
    assert sweep.exit_code == 0, sweep.output
    defaults = load_decoding_defaults(directory)
    assert defaults[TEXT_TO_IMAGE].guidance_scale == 2.0 and defaults[CAPTION].temperature == 0.7
    assert defaults[CAPTION].num_candidates == 2
    assert (Path(directory) / DEFAULTS_FILE).exists()


def test_decode_bench_reports_positive_rates(checkpoint_dir: Path) -> None:
    results = bench_decode(checkpoint_dir, DecodeBenchConfig.preset("quick"))
    keys = ["t1_cfg_b1_images_per_s", "t1_cfg_b2_images_per_s", "t1_pooled8_b1_images_per_s",
            "t1_caption_b2_tokens_per_s", "t1_caption_b2_captions_per_s",
            "t1_segmentation_greedy_b2_maps_per_s", "t1_segmentation_checked_b2_maps_per_s",
            "t1_edit_single_b2_images_per_s", "t1_text_render_single_b2_images_per_s"]
    defaults = load_decoding_defaults(checkpoint_dir)
    for task, name in ((EDIT, "edit"), (TEXT_RENDERING, "text_render")):  # the shipped number of samples, else 2
        checked = defaults[task].num_candidates if defaults[task].num_candidates > 1 else 2
        keys.append(f"t1_{name}_checked{checked}_b2_images_per_s")
    for key in keys:
        assert results[key] > 0, key
    assert results["t1_cfg_b2_ms_per_image"] == pytest.approx(1000 / results["t1_cfg_b2_images_per_s"])
    assert torch.get_num_threads() == 1  # restored to what it was
