"""Pretraining data (corpus cache, packing, documents), the trainer (learning, exact resume, time budget),
the complete checkpoint directory and the `cm3leon train pretrain` command, all on tiny real components."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pretrain_helpers import (
    TEST_SEQ_LEN,
    tiny_corpus,
    tiny_data_config,
    tiny_image_tokenizer,
    tiny_model,
    tiny_source,
    tiny_trainer_config,
    tiny_vocabulary,
)
from typer.testing import CliRunner

from cm3leon.checkpoint import load_checkpoint, save_checkpoint
from cm3leon.cli import app
from cm3leon.data.world import Split, split_of
from cm3leon.objectives.cm3 import CM3Config, CM3Masker
from cm3leon.tasks.formats import SceneDocument
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.vocab import Document, ImageCodes, Vocabulary
from cm3leon.training.checkpoint import MetricsLogger
from cm3leon.training.image_corpus import ImageCodeCorpus
from cm3leon.training.losses import evaluate_perplexity, vocabulary_modalities
from cm3leon.training.packing import pack_rows
from cm3leon.training.pretrain_data import PretrainBatches, heldout_batches
from cm3leon.training.trainer import METRICS_FILE, Trainer


@pytest.fixture(scope="module")
def image_tokenizer() -> ImageTokenizer:
    return tiny_image_tokenizer()


@pytest.fixture(scope="module")
def vocab(image_tokenizer: ImageTokenizer) -> Vocabulary:
    return tiny_vocabulary(image_tokenizer)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def corpus(image_tokenizer: ImageTokenizer, cache_dir: Path) -> ImageCodeCorpus:
    return tiny_corpus(image_tokenizer, cache_dir)


def split_documents(vocab: Vocabulary, row: list[int]) -> tuple[list[list[int]], int]:
    """A packed row -> its `<bos> ... <eos>` documents and the number of trailing pads (asserting the shape)."""
    documents, current = [], None
    for position, token in enumerate(row):
        if token == vocab.pad_id:
            assert current is None and all(t == vocab.pad_id for t in row[position:])
            return documents, len(row) - position
        if token == vocab.bos_id:
            assert current is None
            current = [token]
        else:
            assert current is not None, "a row starts with a document's <bos>"
            current.append(token)
            if token == vocab.eos_id:
                documents.append(current)
                current = None
    assert current is None, "a document was cut at the row's end"
    return documents, 0


# --- data -------------------------------------------------------------------------------------------------------


def test_corpus_cache_is_reused_and_keyed_by_the_vq(image_tokenizer: ImageTokenizer, cache_dir: Path) -> None:
    first = tiny_corpus(image_tokenizer, cache_dir)
    files = sorted(cache_dir.glob("image_codes-train-*.npz"))
    again = tiny_corpus(image_tokenizer, cache_dir)
    assert len(files) == 1 and sorted(cache_dir.glob("image_codes-train-*.npz")) == files
    assert again.scenes == first.scenes and np.array_equal(again.codes, first.codes)
    assert all(split_of(scene, tiny_data_config().world()) is Split.TRAIN for scene in first.scenes)
    assert first.codes.shape == (64, image_tokenizer.config.grid, image_tokenizer.config.grid)
    # The codes are what the VQ says for the rendered scene.
    from cm3leon.data.render import render

    image = render(first.scenes[3], tiny_data_config().world()).image
    assert np.array_equal(image_tokenizer.encode(image[None])[0].numpy(), first.codes[3])
    # Another VQ gets its own cache file, never the stale codes.
    tiny_corpus(tiny_image_tokenizer(seed=1), cache_dir)
    assert len(list(cache_dir.glob("image_codes-train-*.npz"))) == 2


def test_pack_rows_keeps_documents_whole_and_pads_without_loss() -> None:
    pad = -1
    lengths = iter([5, 4, 3, 6, 2, 7, 7, 7, 7, 7])
    units = ((list(range(100 * n, 100 * n + n)), [True] * n) for n in lengths)
    tokens, targets, stats = pack_rows(units, rows=3, seq_len=10, pad_id=pad)
    # Row 0: 5 + 4 (3 does not fit: starts row 1); row 1: 3 + 6; row 2: 2 + 7; the next 7 is dropped.
    assert [sum(t != pad for t in row) for row in tokens.tolist()] == [9, 9, 9]
    assert tokens[1, :3].tolist() == [300, 301, 302] and tokens[2, 2:9].tolist() == list(range(700, 707))
    assert not targets[tokens == pad].any() and targets[tokens != pad].all()
    assert stats.padding == 3 and stats.documents == 6 and stats.split_documents == 0


def test_pack_rows_splits_only_documents_longer_than_a_row() -> None:
    units = iter([([1, 2, 3], [True] * 3), (list(range(10, 25)), [True] * 15), ([7, 7], [True] * 2)])
    tokens, targets, stats = pack_rows(units, rows=3, seq_len=8, pad_id=0)
    # The long unit starts a fresh row and continues on the next; the short one after it fills row 2.
    assert tokens.tolist() == [
        [1, 2, 3, 0, 0, 0, 0, 0],
        list(range(10, 18)),
        [*range(18, 25), 0],
    ]
    assert stats.split_documents == 1
    assert targets.sum() == 3 + 15


def test_pretrain_batches_hold_whole_masked_documents(vocab: Vocabulary, corpus: ImageCodeCorpus) -> None:
    source = tiny_source(vocab, corpus, batch_size=8)
    masker = CM3Masker(vocab)
    kinds: Counter[str] = Counter()
    for index in range(6):
        batch = source.batch(index)
        assert batch.tokens.shape == (8, TEST_SEQ_LEN)
        for row, mask in zip(batch.tokens.tolist(), batch.loss_mask.tolist(), strict=True):
            documents, pads = split_documents(vocab, row)
            assert documents and not any(mask[len(row) - pads :])  # padding carries no loss
            for document in documents:
                kinds["masked" if vocab.infill_id in document else "plain"] += 1
                original = masker.reassemble(document)
                if original[1] == vocab.mask_id:  # the unconditional (CFG) form: <bos> <mask> <break> IMAGE <eos>
                    kinds["unconditional"] += 1
                    assert original[2] == vocab.break_id
                    assert len(original) == 4 + vocab.codes_per_image
                    continue
                segments = vocab.decode_document(original)
                assert len(segments) == 2, segments
                image_first = isinstance(segments[0], ImageCodes)
                kinds["image_first" if image_first else "text_first"] += 1
                caption = segments[1] if image_first else segments[0]
                assert isinstance(caption, str) and len(caption) > 5
    total = kinds["masked"] + kinds["plain"]
    assert total > 70
    # The configured mixes (cm3 masked 0.5, image-first 0.3, unconditional 0.1 of text-first) show up.
    assert 0.3 < kinds["masked"] / total < 0.7
    assert 0.15 < kinds["image_first"] / total < 0.45
    assert 0 < kinds["unconditional"] < kinds["text_first"]
    # A batch is a pure function of its index.
    assert torch.equal(source.batch(3).tokens, source.batch(3).tokens)
    assert not torch.equal(source.batch(3).tokens, source.batch(4).tokens)


def test_retrieval_hook_prepends_documents_to_the_query(vocab: Vocabulary, corpus: ImageCodeCorpus) -> None:
    queries: list[SceneDocument] = []

    def hook(query: SceneDocument, rng: random.Random) -> list[Document]:
        queries.append(query)
        neighbour = (query.corpus_index + 1) % len(corpus)
        return [["a retrieved caption"], ["caption", corpus.image_codes(neighbour)]]

    config = tiny_data_config(retrieved=2, cm3=CM3Config.preset("none"))
    source = PretrainBatches(config, vocab, corpus, batch_size=2, retrieval_hook=hook)
    ids, mask = source.encode_unit(source.sample_document(random.Random(0)), random.Random(1))
    documents, _ = split_documents(vocab, ids)
    query = queries[-1]
    neighbour_codes = corpus.image_codes((query.corpus_index + 1) % len(corpus)).codes
    assert documents[0] == vocab.encode_document(["a retrieved caption"])
    assert documents[1][-vocab.codes_per_image - 1 : -1] == vocab.encode_image(neighbour_codes)
    assert documents[2] == query.token_ids(vocab) and len(documents) == 3
    assert len(mask) == len(ids)
    with pytest.raises(ValueError, match="retrieval hook"):
        PretrainBatches(config, vocab, corpus, batch_size=2)


def test_heldout_batches_are_unmasked_val_documents(
    vocab: Vocabulary, image_tokenizer: ImageTokenizer, cache_dir: Path
) -> None:
    val = tiny_corpus(image_tokenizer, cache_dir, Split.VAL)
    assert all(split_of(s, tiny_data_config().world()) is Split.VAL for s in val.scenes)
    batches = heldout_batches(tiny_data_config(), vocab, val, batch_size=4, n_batches=2)
    tokens = torch.cat([b.tokens for b in batches])
    assert not (tokens == vocab.infill_id).any() and not (tokens == vocab.mask_id).any()
    metrics = evaluate_perplexity(tiny_model(vocab), batches, vocabulary_modalities(vocab))
    # An untrained model is near uniform over the vocabulary, on both modalities.
    for name in ("loss", "text_loss", "image_loss"):
        assert abs(metrics[name] - math.log(vocab.size)) < 0.5
    assert metrics["image_perplexity"] == pytest.approx(math.exp(metrics["image_loss"]))


# --- trainer ----------------------------------------------------------------------------------------------------


def test_short_training_lowers_the_loss(vocab: Vocabulary, corpus: ImageCodeCorpus, tmp_path: Path) -> None:
    model = tiny_model(vocab)
    probe = [tiny_source(vocab, corpus).batch(10_000 + i) for i in range(2)]  # never trained on
    modalities = vocabulary_modalities(vocab)
    before = evaluate_perplexity(model, probe, modalities)
    trainer = Trainer(model, tiny_trainer_config(max_steps=30), tiny_source(vocab, corpus), tmp_path, modalities)
    summary = trainer.train()
    after = evaluate_perplexity(model, probe, modalities)
    assert summary.steps == 30
    assert after["loss"] < 0.8 * before["loss"], (before, after)
    assert after["text_loss"] < before["text_loss"] and after["image_loss"] < before["image_loss"]
    records = MetricsLogger.read(tmp_path / METRICS_FILE)
    assert [r["step"] for r in records] == [1, 5, 10, 15, 20, 25, 30]
    assert {"loss", "text_loss", "image_loss", "lr", "tokens_per_s", "grad_norm"} <= set(records[-1])
    assert records[-1]["loss"] < 0.8 * records[0]["loss"]


@pytest.mark.parametrize("bf16", [False, True])
def test_resume_is_exact(vocab: Vocabulary, corpus: ImageCodeCorpus, tmp_path: Path, bf16: bool) -> None:
    config = tiny_trainer_config(max_steps=6, log_every_steps=2, bf16=bf16)
    modalities = vocabulary_modalities(vocab)
    straight = tiny_model(vocab)
    Trainer(straight, config, tiny_source(vocab, corpus), tmp_path / "straight", modalities).train()

    interrupted = tiny_model(vocab)
    Trainer(interrupted, config, tiny_source(vocab, corpus), tmp_path / "resumed", modalities).train(until_step=3)
    # A new process would start from a different init: resume must overwrite all of it.
    resumed = tiny_model(vocab, seed=123)
    trainer = Trainer(resumed, config, tiny_source(vocab, corpus), tmp_path / "resumed", modalities)
    summary = trainer.train()
    assert summary.steps == 6 and trainer.state.data_position == 6 * config.grad_accum
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-7), name
    steps = [r["step"] for r in MetricsLogger.read(tmp_path / "resumed" / METRICS_FILE) if "loss" in r]
    assert steps == [1, 2, 3, 4, 6]  # step 3 is flushed when interrupted; the resumed run continues


@pytest.mark.slow
def test_prefetching_workers_train_exactly_what_the_loop_would(
    vocab: Vocabulary, corpus: ImageCodeCorpus, tmp_path: Path
) -> None:
    """Worker processes only change speed: same weights as building batches in the loop, across a resume."""
    config = tiny_trainer_config(max_steps=4, grad_accum=2, log_every_steps=2)
    modalities = vocabulary_modalities(vocab)
    inline = tiny_model(vocab)
    Trainer(inline, config, tiny_source(vocab, corpus), tmp_path / "inline", modalities).train()
    prefetched = tiny_model(vocab)
    workers = replace(config, data_workers=2)
    Trainer(prefetched, workers, tiny_source(vocab, corpus), tmp_path / "workers", modalities).train(until_step=1)
    trainer = Trainer(prefetched, workers, tiny_source(vocab, corpus), tmp_path / "workers", modalities)
    assert trainer.train().steps == 4
    for (name, a), b in zip(inline.state_dict().items(), prefetched.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_time_budget_fixes_the_cosine_horizon_and_resume_respects_it(
    vocab: Vocabulary, corpus: ImageCodeCorpus, tmp_path: Path
) -> None:
    config = tiny_trainer_config(max_steps=None, max_minutes=0.05, horizon_calibration_steps=3, warmup_steps=1)
    modalities = vocabulary_modalities(vocab)
    trainer = Trainer(tiny_model(vocab), config, tiny_source(vocab, corpus), tmp_path, modalities)
    summary = trainer.train()
    assert summary.elapsed_seconds >= 3.0 and summary.steps >= 4
    horizon = trainer.state.schedule_steps
    assert horizon is not None and summary.steps / 2 <= horizon <= summary.steps * 2
    # The same command again: the budget is spent, nothing more is trained.
    again = Trainer(tiny_model(vocab), config, tiny_source(vocab, corpus), tmp_path, modalities)
    assert again.train().steps == summary.steps and again.state.schedule_steps == horizon


def test_checkpoint_directory_reloads_identical_logits(
    vocab: Vocabulary, image_tokenizer: ImageTokenizer, tmp_path: Path
) -> None:
    model = tiny_model(vocab).eval()
    with torch.no_grad():  # non-trivial weights (the zero-initialised output projections would hide mistakes)
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    image_tokenizer.save_pretrained(tmp_path / "vq-source")
    directory = save_checkpoint(tmp_path / "final", model, vocab, tmp_path / "vq-source")
    loaded_model, loaded_vocab, loaded_vq = load_checkpoint(directory)
    tokens = torch.randint(0, vocab.size, (2, 40))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded_model(tokens))
    assert loaded_vocab.size == vocab.size and loaded_vocab.encode_text("a red star") == vocab.encode_text("a red star")
    assert loaded_vq is not None
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert torch.equal(loaded_vq.encode(images), image_tokenizer.encode(images))


def test_cli_pretrain_writes_a_complete_directory_and_resumes(
    vocab: Vocabulary, image_tokenizer: ImageTokenizer, tmp_path: Path
) -> None:
    vq_dir = image_tokenizer.save_pretrained(tmp_path / "vq")
    vocab.save(tmp_path / "shared")
    out = tmp_path / "run"
    command = ["train", "pretrain", "--preset", "tiny", "--out", str(out), "--vq", str(vq_dir)]
    command += ["--tokenizer-dir", str(tmp_path / "shared"), "--device", "cpu", "--no-bf16"]
    runner = CliRunner()
    first = runner.invoke(app, [*command, "--steps", "3"])
    assert first.exit_code == 0, first.output
    final = out / "final"
    for name in ("model.safetensors", "model_config.json", "tokenizer.json", "vocab.json", "vq/model.safetensors"):
        assert (final / name).exists(), name
    model, loaded_vocab, loaded_vq = load_checkpoint(final)
    assert loaded_vocab.size == vocab.size == model.config.vocab_size and loaded_vq is not None
    second = runner.invoke(app, [*command, "--steps", "5"])
    assert second.exit_code == 0, second.output
    summary = json.loads((final / "training.json").read_text())["summary"]
    assert summary["steps"] == 5
    steps = [r["step"] for r in MetricsLogger.read(out / METRICS_FILE) if "loss" in r]
    assert steps[0] == 1 and steps[-1] == 5 and 2 not in steps  # the second run continued from step 3
    assert any("val_loss" in r for r in MetricsLogger.read(out / METRICS_FILE))


@pytest.mark.slow
def test_a_horizon_that_follows_speed_stretches_when_the_steps_get_faster(
    vocab: Vocabulary, corpus: ImageCodeCorpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow first steps (a GPU shared at the start) then fast ones: the fixed horizon stays at the slow estimate,
    the following one grows towards the steps the budget really holds."""
    import cm3leon.training.trainer as trainer_module

    clock = {"now": 1000.0}
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: clock["now"])
    original_step = Trainer.train_step

    def timed_step(self: Trainer, step: int):  # noqa: ANN202 (the trainer's own return type)
        clock["now"] += 1.0 if step < 6 else 0.25  # seconds of the fake clock per step
        return original_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", timed_step)
    horizons = {}
    for follows in (False, True):
        config = tiny_trainer_config(max_steps=None, max_minutes=0.5, horizon_calibration_steps=3, warmup_steps=1,
                                     horizon_follows_speed=follows, checkpoint_every_minutes=None)
        trainer = Trainer(tiny_model(vocab), config, tiny_source(vocab, corpus), tmp_path / str(follows),
                          vocabulary_modalities(vocab))
        summary = trainer.train()
        horizons[follows] = (trainer.state.schedule_steps, summary.steps)
    (fixed, fixed_steps), (following, following_steps) = horizons[False], horizons[True]
    assert fixed_steps == following_steps  # the budget, not the schedule, decides when training stops
    assert fixed < 0.5 * fixed_steps  # fixed from the slow start: the cosine ended long before the budget
    assert following >= fixed_steps - 2  # re-estimated: the cosine ends at the deadline
