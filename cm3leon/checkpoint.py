"""A complete model directory: everything needed to generate, in one place.

    DIR/model.safetensors, DIR/model_config.json   the decoder (Transformer.save_pretrained)
    DIR/tokenizer.json, DIR/vocab.json             the text tokenizer and the unified vocabulary's layout
    DIR/vq/config.json, DIR/vq/model.safetensors   the VQ image tokenizer (a copy, so DIR stands alone)
    DIR/training.json                              what the training stage recorded (data config, world)

`cm3leon train pretrain` writes one as `OUT/final`; the SFT stage starts from one and writes another.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from cm3leon.model import Transformer
from cm3leon.tokenizers.image import CONFIG_FILE as VQ_CONFIG_FILE
from cm3leon.tokenizers.image import WEIGHTS_FILE as VQ_WEIGHTS_FILE
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.vocab import Vocabulary

VQ_SUBDIR = "vq"
# What the training stage that made a directory records: its data config (hence the world), its SFT data config.
TRAINING_RECORD_FILE = "training.json"


def save_checkpoint(
    directory: Path, model: Transformer, vocab: Vocabulary, image_tokenizer_dir: Path | None
) -> Path:
    """Write a complete model directory; the VQ tokenizer's files are copied from `image_tokenizer_dir`."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    vocab.save(directory)
    if image_tokenizer_dir is not None and image_tokenizer_dir.resolve() != (directory / VQ_SUBDIR).resolve():
        (directory / VQ_SUBDIR).mkdir(exist_ok=True)
        for name in (VQ_CONFIG_FILE, VQ_WEIGHTS_FILE):
            shutil.copy2(image_tokenizer_dir / name, directory / VQ_SUBDIR / name)
    return directory


def load_checkpoint(
    directory: Path | str, device: torch.device | str = "cpu"
) -> tuple[Transformer, Vocabulary, ImageTokenizer | None]:
    """(model in eval mode, vocabulary, image tokenizer or None when the directory has no `vq/`)."""
    directory = Path(directory)
    model = Transformer.from_pretrained(directory, device=device)
    vocab = Vocabulary.load(directory)
    if model.config.vocab_size != vocab.size:
        raise ValueError(f"model vocab_size {model.config.vocab_size} != vocabulary size {vocab.size} in {directory}")
    vq_dir = directory / VQ_SUBDIR
    if not (vq_dir / VQ_CONFIG_FILE).exists():
        return model, vocab, None
    image_tokenizer = ImageTokenizer.from_pretrained(vq_dir, device=device)
    if image_tokenizer.config.codebook_size != vocab.config.codebook_size:
        raise ValueError(
            f"VQ codebook {image_tokenizer.config.codebook_size} != vocabulary's {vocab.config.codebook_size}"
        )
    return model, vocab, image_tokenizer
