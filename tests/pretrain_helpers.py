"""Tiny real components for the trainer and DDP tests: world-trained BPE, a seeded (untrained) tiny VQ, a corpus.

An untrained VQ still maps each image deterministically to codes, and the codes follow the scene (background
and objects), so the caption/image stream is learnable: that is all the trainer tests need.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from cm3leon.data.world import Split
from cm3leon.model import DecoderConfig, Transformer
from cm3leon.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from cm3leon.tokenizers.text import TextTokenizerConfig
from cm3leon.tokenizers.vocab import Vocabulary, VocabularyConfig
from cm3leon.tokenizers.world_text import train_world_tokenizer
from cm3leon.training.image_corpus import ImageCodeCorpus
from cm3leon.training.pretrain_data import PretrainBatches, PretrainDataConfig, load_corpus
from cm3leon.training.trainer import TrainerConfig

TOKENIZER_SCENES = 300
# About two documents (68 to 150 tokens, mean 108) per row: packing is exercised, steps stay fast.
TEST_SEQ_LEN = 256


def tiny_image_tokenizer(seed: int = 0) -> ImageTokenizer:
    torch.manual_seed(seed)
    return ImageTokenizer(ImageTokenizerConfig.preset("tiny")).eval()


def tiny_data_config(**overrides: object) -> PretrainDataConfig:
    return PretrainDataConfig.preset("tiny", seq_len=TEST_SEQ_LEN, **overrides)  # type: ignore[arg-type]


def tiny_vocabulary(image_tokenizer: ImageTokenizer) -> Vocabulary:
    world = tiny_data_config().world()
    text = train_world_tokenizer(world, TextTokenizerConfig.preset("tiny"), n_scenes=TOKENIZER_SCENES)
    vq = image_tokenizer.config
    return Vocabulary(text, VocabularyConfig(codebook_size=vq.codebook_size, image_grid=vq.grid))


def tiny_corpus(image_tokenizer: ImageTokenizer, cache_dir: Path, split: Split = Split.TRAIN) -> ImageCodeCorpus:
    return load_corpus(tiny_data_config(), image_tokenizer, cache_dir, split, progress=False)


def tiny_model(vocab: Vocabulary, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(DecoderConfig.preset("tiny", vocab_size=vocab.size, max_seq_len=TEST_SEQ_LEN))


def tiny_source(vocab: Vocabulary, corpus: ImageCodeCorpus, batch_size: int = 4) -> PretrainBatches:
    return PretrainBatches(tiny_data_config(), vocab, corpus, batch_size)


def tiny_trainer_config(**overrides: object) -> TrainerConfig:
    return replace(TrainerConfig.preset("tiny"), **overrides)  # type: ignore[arg-type]
