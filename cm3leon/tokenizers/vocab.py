"""The unified vocabulary: the one owner of every token id in the mixed text+image sequence.

Layout (contiguous ranges, in this order):

    specials   <pad> <bos> <eos> <break> <mask> <infill> <mask:0> ... <mask:S-1>
    text       the BPE tokenizer's ids, offset
    image      one id per VQ codebook entry, offset after text
    location   <loc:0> ... <loc:B-1>, discrete box coordinates for grounded generation

`<break>` separates modalities inside a document (the paper's "caption <break> IMAGE"); `<eos>` separates
documents (retrieved documents, then the query document). `<mask>` replaces the text of the unconditional
stream in classifier-free guidance; `<mask:i>`/`<infill>` are CM3's span sentinels. Nothing else in the
project hard-codes an id, a count of codes or a grid size: it asks this object.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cm3leon.tokenizers.text import TextTokenizer

VOCAB_FILE = "vocab.json"

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<break>", "<mask>", "<infill>")


@dataclass(frozen=True)
class ImageCodes:
    """One image as its VQ codes in raster order (row-major over the code grid)."""

    codes: tuple[int, ...]

    @classmethod
    def of(cls, codes: Iterable[int]) -> ImageCodes:
        return cls(tuple(int(c) for c in codes))


@dataclass(frozen=True)
class Locations:
    """Discrete coordinates (bins), e.g. a box as (x0, y0, x1, y1); text modality, no `<break>` around them."""

    bins: tuple[int, ...]


Segment = str | ImageCodes | Locations
Document = Sequence[Segment]


@dataclass(frozen=True)
class VocabularyConfig:
    codebook_size: int
    image_grid: int  # codes per side: an image is image_grid x image_grid codes
    num_mask_sentinels: int = 8
    location_bins: int = 16

    @property
    def codes_per_image(self) -> int:
        return self.image_grid * self.image_grid


class Vocabulary:
    def __init__(self, text_tokenizer: TextTokenizer, config: VocabularyConfig) -> None:
        self.text_tokenizer = text_tokenizer
        self.config = config
        self.special_tokens: tuple[str, ...] = SPECIAL_TOKENS + tuple(
            f"<mask:{i}>" for i in range(config.num_mask_sentinels)
        )
        self._special_id = {name: i for i, name in enumerate(self.special_tokens)}
        text_start = len(self.special_tokens)
        self.text_ids = range(text_start, text_start + text_tokenizer.size)
        self.image_ids = range(self.text_ids.stop, self.text_ids.stop + config.codebook_size)
        self.location_ids = range(self.image_ids.stop, self.image_ids.stop + config.location_bins)
        self.size = self.location_ids.stop

    # --- special ids -------------------------------------------------------------------------------------------
    def special(self, name: str) -> int:
        return self._special_id[name]

    @property
    def pad_id(self) -> int:
        return self._special_id["<pad>"]

    @property
    def bos_id(self) -> int:
        return self._special_id["<bos>"]

    @property
    def eos_id(self) -> int:
        return self._special_id["<eos>"]

    @property
    def break_id(self) -> int:
        return self._special_id["<break>"]

    @property
    def mask_id(self) -> int:
        return self._special_id["<mask>"]

    @property
    def infill_id(self) -> int:
        return self._special_id["<infill>"]

    @property
    def mask_sentinel_ids(self) -> range:
        first = self._special_id["<mask:0>"]
        return range(first, first + self.config.num_mask_sentinels)

    @property
    def codes_per_image(self) -> int:
        return self.config.codes_per_image

    @property
    def image_grid(self) -> int:
        return self.config.image_grid

    # --- per-modality conversion ------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        offset = self.text_ids.start
        return [offset + i for i in self.text_tokenizer.encode(text)]

    def decode_text(self, ids: Iterable[int]) -> str:
        """Text of the text-token ids in `ids`; any other id (special, image, location) is skipped."""
        offset = self.text_ids.start
        return self.text_tokenizer.decode([i - offset for i in ids if i in self.text_ids])

    def encode_image(self, codes: Iterable[int]) -> list[int]:
        codes = [int(c) for c in codes]
        if len(codes) != self.codes_per_image:
            raise ValueError(f"an image has exactly {self.codes_per_image} codes, got {len(codes)}")
        if any(not 0 <= c < self.config.codebook_size for c in codes):
            raise ValueError(f"image codes must lie in [0, {self.config.codebook_size})")
        return [self.image_ids.start + c for c in codes]

    def decode_image(self, ids: Sequence[int]) -> ImageCodes:
        if len(ids) != self.codes_per_image or any(i not in self.image_ids for i in ids):
            raise ValueError(f"an image block is exactly {self.codes_per_image} image-code ids")
        return ImageCodes.of(i - self.image_ids.start for i in ids)

    def encode_locations(self, bins: Iterable[int]) -> list[int]:
        out = []
        for b in bins:
            if not 0 <= b < self.config.location_bins:
                raise ValueError(f"location bin {b} outside [0, {self.config.location_bins})")
            out.append(self.location_ids.start + int(b))
        return out

    # --- documents ---------------------------------------------------------------------------------------------
    @staticmethod
    def _is_image(segment: Segment) -> bool:
        return isinstance(segment, ImageCodes)

    def encode_segment(self, segment: Segment) -> list[int]:
        if isinstance(segment, ImageCodes):
            return self.encode_image(segment.codes)
        if isinstance(segment, Locations):
            return self.encode_locations(segment.bins)
        return self.encode_text(segment)

    def encode_document(self, document: Document, *, bos: bool = True, eos: bool = True) -> list[int]:
        """Token ids of a document; `<break>` is inserted wherever the modality switches (or image follows image)."""
        ids: list[int] = [self.bos_id] if bos else []
        previous: Segment | None = None
        for segment in document:
            if previous is not None and (self._is_image(segment) or self._is_image(previous)):
                ids.append(self.break_id)
            ids.extend(self.encode_segment(segment))
            previous = segment
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode_document(self, ids: Sequence[int]) -> list[Segment]:
        """Inverse of `encode_document` (for well-formed ids): text, location and image segments in order."""
        segments: list[Segment] = []
        run: list[int] = []
        run_kind: str | None = None

        def flush() -> None:
            nonlocal run, run_kind
            if run_kind == "text":
                segments.append(self.decode_text(run))
            elif run_kind == "location":
                segments.append(Locations(tuple(i - self.location_ids.start for i in run)))
            elif run_kind == "image":
                for start in range(0, len(run), self.codes_per_image):
                    segments.append(self.decode_image(run[start : start + self.codes_per_image]))
            run, run_kind = [], None

        for token in ids:
            if token in (self.bos_id, self.pad_id):
                continue
            if token in (self.break_id, self.eos_id):
                flush()
                if token == self.eos_id:
                    break
                continue
            kind = self.kind_of(token)
            if kind != run_kind or (kind == "image" and len(run) == self.codes_per_image):
                flush()
                run_kind = kind
            run.append(token)
        flush()
        return segments

    def kind_of(self, token: int) -> str:
        if token in self.text_ids:
            return "text"
        if token in self.image_ids:
            return "image"
        if token in self.location_ids:
            return "location"
        if 0 <= token < len(self.special_tokens):
            return "special"
        raise ValueError(f"token id {token} outside the vocabulary of size {self.size}")

    def token_name(self, token: int) -> str:
        """Human-readable name of one id (for debugging and grids)."""
        kind = self.kind_of(token)
        if kind == "special":
            return self.special_tokens[token]
        if kind == "image":
            return f"<img:{token - self.image_ids.start}>"
        if kind == "location":
            return f"<loc:{token - self.location_ids.start}>"
        return self.decode_text([token])

    # --- persistence -------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.text_tokenizer.save(directory)
        (directory / VOCAB_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Vocabulary:
        config = VocabularyConfig(**json.loads((directory / VOCAB_FILE).read_text()))
        return cls(TextTokenizer.load(directory), config)
