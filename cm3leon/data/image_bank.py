"""A bank of pre-rendered world images for training the image tokenizer, refreshed chunk by chunk.

Rendering a scene costs ~0.2 ms, a tokenizer training step on a small CPU costs ~100x more per image, but
rendering each batch in the training loop would still be wasted time and a second source of randomness. The bank
renders `size` images up front and re-renders one `chunk` every few steps, so the stream of images keeps changing
(the model never memorises a fixed set) while the CPU spends its time on training.

The bank is a pure function of (config, number of chunks rendered so far): chunk `c` is drawn from a
`random.Random` seeded with (seed, c) and lands in slot `c % num_chunks`. A resumed run rebuilds the exact bank
from that one integer, which is what makes trainer resume exact.

It holds the three kinds of picture the decoder will tokenise with the tokenizer: shapes scenes, colour-coded
segmentation images of scenes, and text-rendering scenes (a word), in a configurable mix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

from cm3leon.data.render import render
from cm3leon.data.world import Split, World, WorldConfig


class ImageKind(StrEnum):
    SCENE = "scene"
    SEGMENTATION = "segmentation"
    TEXT = "text"


@dataclass(frozen=True)
class ImageBankConfig:
    """Size, refresh chunk and picture mix of a bank. Presets: `tiny` (tests) and `shapes` (tokenizer training)."""

    size: int = 16_384
    chunk: int = 1_024
    # Fractions of shapes scenes, their segmentation images and word scenes (they must sum to 1).
    scene_fraction: float = 0.60
    segmentation_fraction: float = 0.25
    text_fraction: float = 0.15
    # Of the segmentation images, this fraction shows a word scene (class "text") rather than shapes.
    text_segmentation_fraction: float = 0.15
    split: Split = Split.TRAIN
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size % self.chunk:
            raise ValueError(f"bank size {self.size} must be a multiple of the chunk {self.chunk}")
        total = self.scene_fraction + self.segmentation_fraction + self.text_fraction
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"image kind fractions sum to {total}, not 1")

    @property
    def num_chunks(self) -> int:
        return self.size // self.chunk

    @classmethod
    def preset(cls, name: str, seed: int = 0) -> ImageBankConfig:
        if name == "tiny":
            return cls(size=256, chunk=64, seed=seed)
        if name == "shapes":
            return cls(seed=seed)
        raise ValueError(f"unknown image bank preset {name!r}; choose from: tiny, shapes")


def render_kind(world: World, rng: random.Random, kind: ImageKind, config: ImageBankConfig) -> np.ndarray:
    """One (H, W, 3) uint8 picture of `kind` from a scene of the bank's split."""
    if kind is ImageKind.TEXT:
        return render(world.sample(rng, config.split, text=True), world.config).image
    if kind is ImageKind.SEGMENTATION:
        text = rng.random() < config.text_segmentation_fraction
        return render(world.sample(rng, config.split, text=text), world.config).segmentation_image
    return render(world.sample(rng, config.split, text=False), world.config).image


class ImageBank:
    """`size` uint8 images (N, H, W, 3) of the world; `refresh()` replaces the oldest chunk with new renders."""

    def __init__(self, world_config: WorldConfig, config: ImageBankConfig, chunks_rendered: int | None = None) -> None:
        """A fresh bank, or with `chunks_rendered` the bank of a resumed run as it was when checkpointed."""
        self.config = config
        self.world = World(world_config)
        side = world_config.image_size
        self.images = torch.zeros((config.size, side, side, 3), dtype=torch.uint8)
        self.kinds = np.zeros(config.size, dtype=np.int8)  # index into `list(ImageKind)`
        self.chunks_rendered = 0
        self.restore(config.num_chunks if chunks_rendered is None else chunks_rendered)

    def _render_chunk(self, chunk_index: int) -> None:
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:image-bank:{chunk_index}")
        kinds = list(ImageKind)
        weights = (cfg.scene_fraction, cfg.segmentation_fraction, cfg.text_fraction)
        start = (chunk_index % cfg.num_chunks) * cfg.chunk
        pictures = np.empty((cfg.chunk, *self.images.shape[1:]), dtype=np.uint8)
        for i in range(cfg.chunk):
            kind = rng.choices(kinds, weights)[0]
            pictures[i] = render_kind(self.world, rng, kind, cfg)
            self.kinds[start + i] = kinds.index(kind)
        self.images[start : start + cfg.chunk] = torch.from_numpy(pictures)

    def refresh(self) -> None:
        """Render the next chunk over the oldest one."""
        self._render_chunk(self.chunks_rendered)
        self.chunks_rendered += 1

    def restore(self, chunks_rendered: int) -> None:
        """Rebuild the bank as it was after `chunks_rendered` chunks (at least one full bank) were rendered."""
        if chunks_rendered < self.config.num_chunks:
            raise ValueError(f"a bank holds {self.config.num_chunks} chunks; cannot restore to {chunks_rendered}")
        for chunk_index in range(chunks_rendered - self.config.num_chunks, chunks_rendered):
            self._render_chunk(chunk_index)
        self.chunks_rendered = chunks_rendered

    def sample(self, generator: np.random.Generator, batch_size: int) -> torch.Tensor:
        """A batch of uint8 images (B, H, W, 3), drawn uniformly with replacement."""
        indices = torch.from_numpy(generator.integers(0, self.config.size, size=batch_size))
        return self.images[indices]

    def kind_fractions(self) -> dict[str, float]:
        counts = np.bincount(self.kinds, minlength=len(ImageKind)) / len(self.kinds)
        return {kind.value: float(count) for kind, count in zip(ImageKind, counts, strict=True)}
