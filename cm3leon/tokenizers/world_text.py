"""Training the BPE tokenizer on the shapes world's text."""

from __future__ import annotations

from cm3leon.data.text_corpus import world_text_corpus
from cm3leon.data.world import WorldConfig
from cm3leon.tokenizers.text import TextTokenizer, TextTokenizerConfig


def train_world_tokenizer(
    world: WorldConfig, config: TextTokenizerConfig, n_scenes: int = 5_000, seed: int = 0
) -> TextTokenizer:
    """A byte-level BPE fitted to every kind of text the world produces (captions, questions, instructions...)."""
    return TextTokenizer.train(world_text_corpus(world, n_scenes=n_scenes, seed=seed), config)
