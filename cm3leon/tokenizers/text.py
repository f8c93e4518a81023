"""Byte-level BPE text tokenizer (Hugging Face `tokenizers`), trained on the world's text.

Byte-level means every UTF-8 string round-trips exactly, whatever the training text was: unseen characters
fall back to their bytes instead of an unknown token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from cm3leon.presets import Presets

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class TextTokenizerConfig(Presets):
    vocab_size: int = 512
    min_frequency: int = 2

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(vocab_size=320),
        # 512 is where every world word is one token while capital letters stay single tokens (a larger
        # vocabulary merges letter pairs like "BC", which would make text rendering harder to learn).
        "shapes": dict(vocab_size=512),
        # The paper's BPE has 56,320 entries; only meaningful with a web-scale corpus.
        "paper": dict(vocab_size=56_320),
    }


class TextTokenizer:
    """A thin typed wrapper: ids are local to the text tokenizer (0..size-1); the Vocabulary offsets them."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], config: TextTokenizerConfig) -> TextTokenizer:
        tokenizer = Tokenizer(models.BPE())
        # No prefix space: "red" at the start of a prompt and after a space then differ, but encode/decode is exact.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @property
    def size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKENIZER_FILE
        self._tokenizer.save(str(path))
        return path

    @classmethod
    def load(cls, directory: Path) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(directory / TOKENIZER_FILE)))
