"""A bank of pre-rendered world images for training the image tokenizer, refreshed chunk by chunk.

Rendering is cheap next to a tokenizer training step, but rendering each batch in the training loop would still
be wasted time and a second source of randomness. The bank
renders `size` images up front and re-renders one `chunk` every few steps, so the stream of images keeps changing
(the model never memorises a fixed set) while the CPU spends its time on training.

The bank is a pure function of (config, number of chunks rendered so far): chunk `c` is drawn from a
`random.Random` seeded with (seed, c) and lands in slot `c % num_chunks`. A resumed run rebuilds the exact bank
from that one integer, which is what makes trainer resume exact.

It holds the three kinds of picture the decoder will tokenise with the tokenizer: shapes scenes, colour-coded
segmentation images of scenes, and text-rendering scenes (a word), in a configurable mix.
"""

from __future__ import annotations

import functools
import multiprocessing
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np
import torch

from cm3leon.data.render import render
from cm3leon.data.world import Split, World, WorldConfig
from cm3leon.presets import Presets


class ImageKind(StrEnum):
    SCENE = "scene"
    SEGMENTATION = "segmentation"
    TEXT = "text"


@dataclass(frozen=True)
class ImageBankConfig(Presets):
    """Size, refresh chunk and picture mix of a bank. Presets: `tiny` (tests) and `shapes` (tokenizer training).

    Attributes:
        size, chunk: pictures in the bank, and in each chunk rendered (and refreshed) at once.
        scene_fraction, segmentation_fraction, text_fraction: the mix of `ImageKind`s: shapes scenes, their
            segmentation images and word scenes (they must sum to 1).
        text_segmentation_fraction: of the segmentation images, those showing a word scene (class "text") rather
            than shapes.
        split, seed: the world split the scenes come from, and the seed of every chunk.
    """

    size: int = 16_384
    chunk: int = 1_024
    scene_fraction: float = 0.60
    segmentation_fraction: float = 0.25
    text_fraction: float = 0.15
    text_segmentation_fraction: float = 0.15
    split: Split = Split.TRAIN
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(size=256, chunk=64),
        "shapes": {},
        # A GPU step eats a 256-image batch in milliseconds: render a large bank once (in parallel) and never
        # refresh it in the loop; 2^18 images are still a sliver of the world's scenes.
        "gpu": dict(size=262_144, chunk=8_192),
    }

    def __post_init__(self) -> None:
        if self.size % self.chunk:
            raise ValueError(f"bank size {self.size} must be a multiple of the chunk {self.chunk}")
        total = self.scene_fraction + self.segmentation_fraction + self.text_fraction
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"image kind fractions sum to {total}, not 1")

    @property
    def num_chunks(self) -> int:
        return self.size // self.chunk


def render_chunk(world_config: WorldConfig, config: ImageBankConfig, chunk_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk `chunk_index` of a bank: (chunk, H, W, 3) uint8 pictures and their kind indices, drawn from a
    `random.Random` seeded with (seed, chunk_index), so any process renders the same chunk."""
    world = World(world_config)
    rng = random.Random(f"{config.seed}:image-bank:{chunk_index}")
    kinds = list(ImageKind)
    weights = (config.scene_fraction, config.segmentation_fraction, config.text_fraction)
    side = world_config.image_size
    pictures = np.empty((config.chunk, side, side, 3), dtype=np.uint8)
    kind_indices = np.empty(config.chunk, dtype=np.int8)
    for i in range(config.chunk):
        kind = rng.choices(kinds, weights)[0]
        pictures[i] = render_kind(world, rng, kind, config)
        kind_indices[i] = kinds.index(kind)
    return pictures, kind_indices


def render_kind(world: World, rng: random.Random, kind: ImageKind, config: ImageBankConfig) -> np.ndarray:
    """One (H, W, 3) uint8 picture of `kind` from a scene of the bank's split."""
    if kind is ImageKind.TEXT:
        return render(world.sample(rng, config.split, text=True), world.config).image
    if kind is ImageKind.SEGMENTATION:
        text = rng.random() < config.text_segmentation_fraction
        return render(world.sample(rng, config.split, text=text), world.config).segmentation_image
    return render(world.sample(rng, config.split, text=False), world.config).image


class ImageBank:
    """`size` uint8 images (N, H, W, 3) of the world; `refresh()` replaces the oldest chunk with new renders.

    `device` is where the images live (a GPU run keeps the whole bank there, so sampling costs no copy);
    `render_workers` > 1 renders the initial bank's chunks in that many processes.
    """

    def __init__(
        self,
        world_config: WorldConfig,
        config: ImageBankConfig,
        chunks_rendered: int | None = None,
        device: torch.device | str = "cpu",
        render_workers: int = 1,
    ) -> None:
        """A fresh bank, or with `chunks_rendered` the bank of a resumed run as it was when checkpointed."""
        self.config = config
        self.world_config = world_config
        side = world_config.image_size
        self.images = torch.zeros((config.size, side, side, 3), dtype=torch.uint8, device=device)
        self.kinds = np.zeros(config.size, dtype=np.int8)  # index into `list(ImageKind)`
        self.chunks_rendered = 0
        self.render_workers = render_workers
        self.restore(config.num_chunks if chunks_rendered is None else chunks_rendered)

    def _store_chunk(self, chunk_index: int, pictures: np.ndarray, kind_indices: np.ndarray) -> None:
        start = (chunk_index % self.config.num_chunks) * self.config.chunk
        self.kinds[start : start + self.config.chunk] = kind_indices
        self.images[start : start + self.config.chunk] = torch.from_numpy(pictures).to(self.images.device)

    def refresh(self) -> None:
        """Render the next chunk over the oldest one."""
        self._store_chunk(self.chunks_rendered, *render_chunk(self.world_config, self.config, self.chunks_rendered))
        self.chunks_rendered += 1

    def restore(self, chunks_rendered: int) -> None:
        """Rebuild the bank as it was after `chunks_rendered` chunks (at least one full bank) were rendered."""
        if chunks_rendered < self.config.num_chunks:
            raise ValueError(f"a bank holds {self.config.num_chunks} chunks; cannot restore to {chunks_rendered}")
        indices = list(range(chunks_rendered - self.config.num_chunks, chunks_rendered))
        render = functools.partial(render_chunk, self.world_config, self.config)
        if self.render_workers > 1:
            with multiprocessing.get_context("fork").Pool(self.render_workers) as pool:
                for chunk_index, rendered in zip(indices, pool.imap(render, indices), strict=True):
                    self._store_chunk(chunk_index, *rendered)
        else:
            for chunk_index in indices:
                self._store_chunk(chunk_index, *render(chunk_index))
        self.chunks_rendered = chunks_rendered

    def sample(self, generator: np.random.Generator, batch_size: int) -> torch.Tensor:
        """A batch of uint8 images (B, H, W, 3), drawn uniformly with replacement."""
        indices = torch.from_numpy(generator.integers(0, self.config.size, size=batch_size))
        return self.images[indices.to(self.images.device)]

    def kind_fractions(self) -> dict[str, float]:
        counts = np.bincount(self.kinds, minlength=len(ImageKind)) / len(self.kinds)
        return {kind.value: float(count) for kind, count in zip(ImageKind, counts, strict=True)}
