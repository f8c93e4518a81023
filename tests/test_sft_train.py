"""The SFT batch source (pure per index, picklable, mixture weights hold) and `cm3leon train sft` end to end:
a tiny run from an init checkpoint lowers the loss, writes a complete model directory and resumes."""

from __future__ import annotations

import json
import math
import pickle
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from pretrain_helpers import tiny_image_tokenizer, tiny_vocabulary
from sft_helpers import tiny_init_checkpoint, tiny_sft_source, tiny_task_corpus
from typer.testing import CliRunner

from cm3leon.checkpoint import load_checkpoint
from cm3leon.cli import app
from cm3leon.tasks.formats import SceneDocument
from cm3leon.tokenizers.vocab import Document, Vocabulary
from cm3leon.training.sft_data import MIXTURE_ENTRIES, PRETRAIN, TaskMixture
from cm3leon.training.state import MetricsLogger
from cm3leon.training.task_corpus import TaskCorpus
from cm3leon.training.trainer import METRICS_FILE

MIX_FILE = Path(__file__).resolve().parents[1] / "configs" / "sft_mix.json"


@pytest.fixture(scope="module")
def vocab_and_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Vocabulary, TaskCorpus]:
    image_tokenizer = tiny_image_tokenizer()
    return tiny_vocabulary(image_tokenizer), tiny_task_corpus(image_tokenizer, tmp_path_factory.mktemp("cache"))


def test_batches_are_a_pure_function_of_the_index_and_survive_pickling(
    vocab_and_corpus: tuple[Vocabulary, TaskCorpus],
) -> None:
    source = tiny_sft_source(*vocab_and_corpus, mixture=TaskMixture.load(MIX_FILE))
    first = source.batch(7)
    source.batch(3)  # another index in between must not matter
    again = source.batch(7)
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.loss_mask, again.loss_mask)
    assert not torch.equal(first.tokens, source.batch(8).tokens)
    copy = pickle.loads(pickle.dumps(source))  # what a DataLoader worker process receives
    assert torch.equal(copy.batch(7).tokens, first.tokens)
    assert first.tokens.shape == (4, source.config.seq_len) and first.num_targets > 0
    padding = first.tokens == source.vocab.pad_id
    assert not bool(first.loss_mask[padding].any())


def test_shipped_mixture_keeps_a_fifth_pretraining_and_every_task() -> None:
    probabilities = TaskMixture.load(MIX_FILE).probabilities()
    assert set(probabilities) == set(MIXTURE_ENTRIES)
    assert probabilities[PRETRAIN] == pytest.approx(0.2, abs=0.02)
    assert all(p > 0 for p in probabilities.values())
    for later_stage in sorted(MIX_FILE.parent.glob("sft_mix_*.json")):  # continuation mixtures: every task kept
        later = TaskMixture.load(later_stage).probabilities()
        assert set(later) == set(MIXTURE_ENTRIES) and all(p > 0 for p in later.values()), later_stage.name
    with pytest.raises(ValueError, match="unknown mixture"):
        TaskMixture.from_mapping({"t2i": 1.0, "dance": 1.0})


def test_mixture_weights_hold_statistically(vocab_and_corpus: tuple[Vocabulary, TaskCorpus]) -> None:
    weights = {PRETRAIN: 4.0, "edit": 3.0, "vqa": 2.0, "infill": 1.0}
    source = tiny_sft_source(*vocab_and_corpus, mixture=TaskMixture.from_mapping(weights))
    draws = 8000
    rng = random.Random(0)
    counts = Counter(source.draw_entry(rng) for _ in range(draws))
    assert set(counts) == set(weights)
    for name, weight in weights.items():
        p = weight / sum(weights.values())
        sigma = math.sqrt(p * (1 - p) / draws)
        assert abs(counts[name] / draws - p) < 4 * sigma, (name, counts[name])


def test_retrieval_hook_documents_are_context_without_loss(vocab_and_corpus: tuple[Vocabulary, TaskCorpus]) -> None:
    vocab, corpus = vocab_and_corpus
    seen: list[SceneDocument] = []

    def hook(query: SceneDocument, rng: random.Random) -> list[Document]:
        seen.append(query)
        return [[corpus.scenes.image_codes(0), "retrieved caption"]]

    source = tiny_sft_source(vocab, corpus, mixture=TaskMixture.from_mapping({"t2i": 1.0}), text_dropout=0.0)
    hooked = tiny_sft_source(vocab, corpus, mixture=TaskMixture.from_mapping({"t2i": 1.0}), text_dropout=0.0)
    hooked.retrieval_hook = hook
    ids, mask = hooked.task_unit("t2i", random.Random(3))
    plain_ids, plain_mask = source.task_unit("t2i", random.Random(3))
    retrieved = vocab.encode_document([corpus.scenes.image_codes(0), "retrieved caption"])
    assert ids == retrieved + plain_ids and mask == [False] * len(retrieved) + plain_mask
    assert len(seen) == 1 and seen[0].caption and not seen[0].image_first


def test_cli_sft_lowers_the_loss_writes_a_model_directory_and_resumes(tmp_path: Path) -> None:
    init = tiny_init_checkpoint(tmp_path)
    out = tmp_path / "sft"
    command = ["train", "sft", "--init", str(init), "--out", str(out), "--mix", str(MIX_FILE)]
    command += ["--device", "cpu", "--no-bf16", "--lr", "0.003"]
    runner = CliRunner()
    first = runner.invoke(app, [*command, "--steps", "20"])
    assert first.exit_code == 0, first.output
    final = out / "final"
    model, vocab, image_tokenizer = load_checkpoint(final)
    init_model, init_vocab, _ = load_checkpoint(init)
    assert vocab.size == init_vocab.size == model.config.vocab_size and image_tokenizer is not None
    assert model.config == init_model.config  # the preset comes from the init checkpoint
    losses = [r["loss"] for r in MetricsLogger.read(out / METRICS_FILE) if "loss" in r]
    assert losses[-1] < losses[0] - 0.3, losses
    second = runner.invoke(app, [*command, "--steps", "25"])
    assert second.exit_code == 0, second.output
    record = json.loads((final / "training.json").read_text())
    assert record["stage"] == "sft" and record["summary"]["steps"] == 25
    steps = [r["step"] for r in MetricsLogger.read(out / METRICS_FILE) if "loss" in r]
    assert steps[0] == 1 and steps[-1] == 25 and steps.count(1) == 1  # the second run continued from step 20
    assert any("val_loss" in r for r in MetricsLogger.read(out / METRICS_FILE))


def test_cli_sft_pool_sizes_and_seed_replace_the_presets(tmp_path: Path) -> None:
    init = tiny_init_checkpoint(tmp_path)
    out = tmp_path / "sft"
    command = ["train", "sft", "--init", str(init), "--out", str(out), "--mix", str(MIX_FILE), "--device", "cpu"]
    command += ["--no-bf16", "--steps", "1", "--scenes", "24", "--words", "5", "--edits", "7"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    pools = json.loads((out / "final" / "training.json").read_text())["sft_data_config"]["corpus"]
    assert (pools["scenes"], pools["words"], pools["edits"]) == (24, 5, 7)
    bad = CliRunner().invoke(app, [*command[:-6], "--scenes", "0"])
    assert bad.exit_code != 0 and "--scenes" in bad.output
    # Another pool seed: other training examples, the same held-out pools (so held-out losses compare).
    reseeded = tmp_path / "sft-seed-3"
    command[command.index(str(out))] = str(reseeded)
    result = CliRunner().invoke(app, [*command, "--pool-seed", "3", "--vqa-per-image", "4", "--caption-words", "0.5"])
    assert result.exit_code == 0, result.output
    reseeded_data = json.loads((reseeded / "final" / "training.json").read_text())["sft_data_config"]
    assert reseeded_data["corpus"]["seed"] == 3 and reseeded_data["vqa_questions_per_image"] == 4
    assert reseeded_data["caption_word_fraction"] == 0.5
    first_data = json.loads((out / "final" / "training.json").read_text())["sft_data_config"]
    assert first_data["vqa_questions_per_image"] == 1 and first_data["caption_word_fraction"] == 0.0
    bad = CliRunner().invoke(app, [*command, "--vqa-per-image", "0"])
    assert bad.exit_code != 0 and "--vqa-per-image" in bad.output
    bad = CliRunner().invoke(app, [*command, "--caption-words", "2"])
    assert bad.exit_code != 0 and "--caption-words" in bad.output

    def caches(run: Path, split: str) -> set[str]:
        return {path.name for path in (run / "cache").glob(f"task_corpus-{split}-*.npz")}

    assert caches(reseeded, "val") == caches(out, "val") and len(caches(out, "val")) == 1
    assert caches(reseeded, "train").isdisjoint(caches(out, "train")) and len(caches(reseeded, "train")) == 1
    scenes = [
        TaskCorpus.load(run / "cache" / caches(run, "train").pop()).scenes.scenes for run in (out, reseeded)
    ]
    assert len(scenes[0]) == len(scenes[1]) == 24 and scenes[0] != scenes[1]
