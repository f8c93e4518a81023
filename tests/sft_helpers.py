"""Tiny real components for the SFT and `eval all` tests: a tiny init checkpoint, a task corpus, a batch source."""

from __future__ import annotations

from pathlib import Path

import torch
from pretrain_helpers import TEST_SEQ_LEN, tiny_image_tokenizer, tiny_model, tiny_vocabulary

from cm3leon.checkpoint import save_checkpoint
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.vocab import Vocabulary
from cm3leon.training.sft_data import SFTBatches, SFTDataConfig, TaskMixture
from cm3leon.training.task_corpus import TaskCorpus

TINY_WORLD = "shapes32"


def tiny_sft_config(**overrides: object) -> SFTDataConfig:
    return SFTDataConfig.preset("tiny", seq_len=TEST_SEQ_LEN, world_preset=TINY_WORLD, **overrides)


def tiny_task_corpus(image_tokenizer: ImageTokenizer, cache_dir: Path) -> TaskCorpus:
    config = tiny_sft_config()
    return TaskCorpus.cached(cache_dir, config.corpus, config.world(), image_tokenizer, progress=False)


def tiny_sft_source(
    vocab: Vocabulary, corpus: TaskCorpus, mixture: TaskMixture | None = None, **overrides: object
) -> SFTBatches:
    return SFTBatches(tiny_sft_config(**overrides), vocab, corpus, mixture or TaskMixture.uniform(), batch_size=4)


def tiny_init_checkpoint(root: Path, noise: float = 0.05) -> Path:
    """A complete tiny model directory (world BPE, seeded VQ, random weights) as `train pretrain` writes one.

    Small weight noise: the zero-initialised output projections would otherwise make every logit equal."""
    image_tokenizer = tiny_image_tokenizer()
    vocab = tiny_vocabulary(image_tokenizer)
    model = tiny_model(vocab).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * noise)
    return save_checkpoint(root / "init", model, vocab, image_tokenizer.save_pretrained(root / "vq"))
