"""Retrieval documents: what the memory stores and what a query is (text, image, or both).

`world_documents` is the corpus of the shapes world: document `i` of a (split, seed) stream is a pure function
of its index, so any consumer (the corpus builder, the decoder's retrieval-augmented pretraining) regenerates
the same document with the same id, and can pass that id as `exclude_ids` so a training sample never
retrieves itself.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cm3leon.data.language import CORPUS_TEXT_SCENE_FRACTION, detailed_caption
from cm3leon.data.render import render
from cm3leon.data.world import Scene, Split, World


@dataclass(frozen=True, eq=False)
class RetrievalDocument:
    """A document of the memory, or a query. At least one of `text` and `image` is set."""

    doc_id: str
    text: str | None = None
    image: np.ndarray | None = None  # (H, W, 3) uint8
    split: str | None = None
    scene: Scene | None = None  # ground truth when the document comes from the world (evaluation only)

    def __post_init__(self) -> None:
        if self.text is None and self.image is None:
            raise ValueError(f"document {self.doc_id!r} has neither text nor image")

    @property
    def has_text(self) -> bool:
        return self.text is not None

    @property
    def has_image(self) -> bool:
        return self.image is not None


def world_document_id(split: Split | str, seed: int, index: int) -> str:
    return f"{Split(split).value}-{seed}-{index}"


def world_document(
    world: World, split: Split | str, seed: int, index: int, text_fraction: float = CORPUS_TEXT_SCENE_FRACTION
) -> RetrievalDocument:
    """Document `index` of the (split, seed) stream: a detailed caption paraphrase and the rendered image."""
    split = Split(split)
    rng = random.Random(f"{seed}:{split.value}:{index}")
    scene = world.sample(rng, split, text=rng.random() < text_fraction)
    return RetrievalDocument(
        doc_id=world_document_id(split, seed, index),
        text=detailed_caption(scene, world.config, rng),
        image=render(scene, world.config).image,
        split=split.value,
        scene=scene,
    )


def world_documents(
    world: World,
    n: int,
    seed: int = 0,
    split: Split | str = Split.TRAIN,
    start: int = 0,
    text_fraction: float = CORPUS_TEXT_SCENE_FRACTION,
) -> Iterator[RetrievalDocument]:
    for index in range(start, start + n):
        yield world_document(world, split, seed, index, text_fraction)
