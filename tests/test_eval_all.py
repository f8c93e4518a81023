"""`cm3leon eval all` on a tiny random checkpoint: every summary key, a section and a grid per task, a Fréchet
distance from a tiny retriever; and the pieces whose numbers can be checked exactly (infill decoding keeps every
code outside the hole, segmentation scores of the truth are 1, the summary reads the best method)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cm3leon.bundle import ModelBundle
from cm3leon.cli import app
from cm3leon.data.render import render
from cm3leon.data.tasks import EDIT_KINDS
from cm3leon.data.world import Split, World
from cm3leon.decoding import document_prompt_ids
from cm3leon.evaluation.image_tasks_eval import _miou
from cm3leon.evaluation.retrieval_prefix import memory_prefix, open_memory
from cm3leon.evaluation.t2i_task_eval import WITH_RETRIEVAL
from cm3leon.evaluation.task_cases import EVAL_TASKS, TaskEvalConfig, build_cases, formatter
from cm3leon.evaluation.tasks_eval import SUMMARY_KEYS, grid_path, summarize
from cm3leon.retrieval.config import RetrieverConfig
from cm3leon.retrieval.corpus import build_memory
from cm3leon.retrieval.documents import world_documents
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.decode import generate_infills
from cm3leon.tasks.infill import infill_spans, span_lengths
from cm3leon.tasks.parsing import infill_result


def test_cli_eval_all_writes_every_summary_key_section_and_grid(
    checkpoint_dir: Path, checkpoint: ModelBundle, tmp_path: Path
) -> None:
    config = replace(RetrieverConfig.preset("tiny"), image_size=checkpoint.world.image_size)
    retriever = Retriever.build(config, checkpoint.vocab.text_tokenizer)
    retriever_dir = retriever.save_pretrained(tmp_path / "retriever")
    store = open_memory(tmp_path / "qdrant", "tiny", retriever)  # a real embedded Qdrant memory
    documents = world_documents(World(checkpoint.world), 24, split=Split.TRAIN)
    build_memory(store, retriever, documents, image_tokenizer=checkpoint.image_tokenizer, progress_bar=False)
    vocab = checkpoint.vocab
    max_seq_len = checkpoint.model.config.max_seq_len
    prefix = memory_prefix(store, retriever, vocab, max_seq_len, k=2)(["a red circle on a white background"])[0]
    # Whole `<bos> ... <eos>` documents, as many as leave room for the prompt and its image (one here).
    assert prefix[0] == vocab.bos_id and prefix[-1] == vocab.eos_id and prefix.count(vocab.eos_id) == 1
    prompt = document_prompt_ids(vocab, ["a red circle on a white background"], "image")
    assert len(prefix) + len(prompt) + vocab.codes_per_image + 1 <= max_seq_len
    store.close()
    json_path = tmp_path / "all.json"
    command = ["eval", "all", "--checkpoint", str(checkpoint_dir), "--n", "3", "--json", str(json_path)]
    command += ["--memory", str(tmp_path / "qdrant"), "--memory-name", "tiny"]
    result = CliRunner().invoke(app, [*command, "--batch-size", "4", "--retriever", str(retriever_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads(json_path.read_text())
    summary = report["summary"]
    assert tuple(summary) == SUMMARY_KEYS
    for key, value in summary.items():
        if key == "t2i_fd":
            assert isinstance(value, float) and math.isfinite(value) and value >= 0
        else:
            assert isinstance(value, float) and 0.0 <= value <= 1.0, (key, value)
    for task in EVAL_TASKS:
        assert task in report and grid_path(json_path, task).exists(), task
    t2i = report["t2i"]
    assert set(t2i["test"]) == {"plain", "cfg", "cdk", "pooled", WITH_RETRIEVAL} and "test_compositional" in t2i
    assert t2i["with_retrieval"] is True
    assert report["edit"]["n"] == 3 and set(report["edit"]["by_kind"]) <= set(EDIT_KINDS)
    assert report["segmentation"]["vq_ceiling"]["miou"] <= 1.0
    assert set(report["vq_ceiling"]) == {"scene_exact_accuracy", "word_accuracy"}
    assert 0.0 <= report["grounded"]["box_iou"] <= 1.0


def test_infill_decoding_writes_only_the_hole(checkpoint: ModelBundle) -> None:
    cases = build_cases(checkpoint, TaskEvalConfig.preset("quick"))
    world, vocab = checkpoint.world, checkpoint.vocab
    fmt = formatter(checkpoint)
    regions = [world.cell_box(cell) for cell in (0, 4, 8)]
    examples = [fmt.infill(image, region, None) for image, region in zip(cases.images, regions, strict=True)]
    lengths = [span_lengths(region, world.image_size, vocab) for region in regions]
    outputs = generate_infills(checkpoint, [e.prompt for e in examples], lengths, batch_size=2)
    for example, output, region, image in zip(examples, outputs, regions, cases.images, strict=True):
        assert len(output) == len(example.output)  # same layout as the ground truth continuation
        completed = infill_result(example.prompt, output, vocab)
        assert completed is not None
        hole = {i for start, end in infill_spans(region, world.image_size, vocab) for i in range(start, end)}
        assert all(completed.codes[i] == image.codes[i] for i in range(vocab.codes_per_image) if i not in hole)


def test_segmentation_scores_are_one_on_truth_and_lower_on_a_wrong_map(checkpoint: ModelBundle) -> None:
    cases = build_cases(checkpoint, TaskEvalConfig.preset("quick"))
    truths = [render(scene, checkpoint.world).segmentation for scene in cases.scenes]
    perfect = _miou(truths, truths, checkpoint.world)
    assert perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0
    wrong = _miou([np.zeros_like(t) for t in truths], truths, checkpoint.world)
    assert wrong["miou"] < 0.5 and wrong["pixel_accuracy"] < 1.0


def test_summary_reads_the_best_method_and_leaves_missing_numbers_empty() -> None:
    method = {"plain": {"exact_scene_accuracy": 0.5, "fd": 3.0}, "cfg": {"exact_scene_accuracy": 0.75, "fd": 2.0}}
    report: dict[str, object] = {"t2i": {"test": method, "best_method": "cfg"}, "vqa": {"accuracy": 0.25}}
    summary = summarize(report, "test")
    assert tuple(summary) == SUMMARY_KEYS
    assert summary["t2i_exact"] == 0.75 and summary["t2i_fd"] == 2.0 and summary["t2i_cfg_exact"] == 0.75
    assert summary["vqa_accuracy"] == 0.25 and summary["t2i_pooled_rerank_exact"] is None


def test_eval_refuses_the_training_split_and_compositional_test_data_in_a_validation_run() -> None:
    with pytest.raises(ValueError, match="held-out"):
        TaskEvalConfig(split="train")
    with pytest.raises(ValueError, match="compositional"):
        TaskEvalConfig(split="val")  # compositional defaults on: its cases would be test data
    with pytest.raises(ValueError, match="subset"):
        TaskEvalConfig(tasks=("t2i", "captioning"))
    assert TaskEvalConfig(split="val", compositional=False, question_n=7).questions == 7


def test_cli_eval_all_on_validation_runs_only_the_named_tasks_with_more_questions(
    checkpoint_dir: Path, tmp_path: Path
) -> None:
    json_path = tmp_path / "val.json"
    command = ["eval", "all", "--checkpoint", str(checkpoint_dir), "--n", "2", "--json", str(json_path)]
    command += ["--split", "val", "--tasks", "vqa,edit", "--question-n", "5", "--batch-size", "4"]
    result = CliRunner().invoke(app, [*command, "--retriever", str(tmp_path / "none")])
    assert result.exit_code == 0, result.output
    report = json.loads(json_path.read_text())
    assert report["split"] == "val" and set(report["seconds"]) == {"vqa", "edit"}
    assert report["vqa"]["n"] == 5 and report["edit"]["n"] == 2  # questions from their own, longer case list
    assert "t2i" not in report and report["summary"]["t2i_exact"] is None
    assert isinstance(report["summary"]["vqa_accuracy"], float) and report["summary"]["caption_exact"] is None
    assert grid_path(json_path, "vqa").exists() and not grid_path(json_path, "t2i").exists()
