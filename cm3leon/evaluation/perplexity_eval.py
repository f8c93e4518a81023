"""Held-out perplexity per modality: how well the decoder predicts captions and images it never trained on.

Uses the pretraining data's own held-out batches (`heldout_batches`: plain causal `caption <break> IMAGE` and
`IMAGE <break> caption` documents of val / test scenes, no CM3 masking), so text loss measures the
image->text direction and image loss the text->image direction exactly as they are generated.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cm3leon.bundle import ModelBundle
from cm3leon.data.world import Split
from cm3leon.presets import Presets
from cm3leon.training.losses import evaluate_perplexity, vocabulary_modalities
from cm3leon.training.pretrain import CACHE_DIR
from cm3leon.training.pretrain_data import heldout_batches, load_corpus, recorded_data_config

# Report sections: evaluate_perplexity's key prefix for each ("" is every target together).
SECTIONS: dict[str, str] = {"text": "text_", "image": "image_", "all": ""}


@dataclass(frozen=True)
class PerplexityEvalConfig(Presets):
    """Which held-out splits and how many rows. `n_batches` None: the data config's `heldout_batch_count`.
    Presets: `standard`, `quick` (tests)."""

    splits: tuple[str, ...] = (Split.VAL.value, Split.TEST.value)
    batch_size: int = 8
    n_batches: int | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"standard": {}, "quick": dict(batch_size=2, n_batches=1)}


def _split_metrics(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {"loss": metrics[f"{prefix}loss"], "perplexity": metrics[f"{prefix}perplexity"]}


def run_cache_dir(checkpoint_dir: Path) -> Path | None:
    """The image-code cache of the pretraining run that wrote `RUN/final`, when it is still there: its val
    corpus is exactly the one needed (the cache is keyed by VQ, world, split, count and seed)."""
    cache = checkpoint_dir.resolve().parent / CACHE_DIR
    return cache if cache.is_dir() else None


def evaluate_heldout_perplexity(
    checkpoint: ModelBundle, config: PerplexityEvalConfig, cache_dir: Path | None = None
) -> dict[str, object]:
    """{"text": {split: {loss, perplexity}}, "image": {...}, "all": {...}, "targets": {split: count}}.

    Held-out images are VQ-encoded once into `cache_dir`; by default the pretraining run's cache, else a
    temporary folder (a shipped model directory is never written to)."""
    cache_dir = cache_dir or run_cache_dir(checkpoint.directory)
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="cm3leon-eval-") as temporary:
            return evaluate_heldout_perplexity(checkpoint, config, Path(temporary))
    data_config = recorded_data_config(checkpoint.directory, checkpoint.model.config.max_seq_len, checkpoint.image_size)
    n_batches = config.n_batches or data_config.heldout_batch_count
    modalities = vocabulary_modalities(checkpoint.vocab)
    report: dict[str, Any] = {section: {} for section in SECTIONS}
    report["targets"] = {}
    splits: Sequence[Split] = [Split(split) for split in config.splits]
    for split in splits:
        if split is Split.TRAIN:
            raise ValueError("held-out perplexity is for val / test splits, not train")
        corpus = load_corpus(data_config, checkpoint.image_tokenizer, cache_dir, split, progress=False)
        batches = heldout_batches(data_config, checkpoint.vocab, corpus, config.batch_size, n_batches)
        metrics = evaluate_perplexity(checkpoint.model, batches, modalities)
        for section, prefix in SECTIONS.items():
            report[section][split.value] = _split_metrics(metrics, prefix)
        report["targets"][split.value] = int(metrics["targets"])
    report["batches_per_split"] = n_batches
    report["batch_size"] = config.batch_size
    return report
