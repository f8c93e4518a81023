"""The world's text corpus: every kind of text the shapes world produces, what the BPE tokenizer is fitted to."""

from __future__ import annotations

import random
from collections.abc import Iterator

from cm3leon.data.language import (
    CORPUS_TEXT_SCENE_FRACTION,
    detailed_caption_variants,
    short_caption_variants,
    text_render_prompt,
    vocabulary_words,
)
from cm3leon.data.questions import qa_pairs, reasoning_pairs
from cm3leon.data.tasks import grounded_text, make_edit, make_grounded
from cm3leon.data.world import Split, World, WorldConfig


def world_text_corpus(
    config: WorldConfig, n_scenes: int, seed: int, text_fraction: float = CORPUS_TEXT_SCENE_FRACTION
) -> Iterator[str]:
    """Every kind of text the world produces, for training the BPE tokenizer.

    Drawn from the train split only; the tokenizer pre-splits on whitespace, so it learns the same word pieces
    as it would from all splits without ever seeing a held-out scene.
    """
    world = World(config)
    rng = random.Random(seed)
    yield from vocabulary_words(config)
    for _ in range(n_scenes):
        scene = world.sample(rng, Split.TRAIN, text=rng.random() < text_fraction)
        yield from detailed_caption_variants(scene, config)
        yield from short_caption_variants(scene, config)
        if scene.is_text:
            yield text_render_prompt(scene, config)
        for qa in [*qa_pairs(scene, config, rng), *reasoning_pairs(scene, config, rng)]:
            yield qa.question
            yield qa.answer
        if not scene.is_text:
            yield make_edit(world, rng, Split.TRAIN).instruction
            for _, description in grounded_text(make_grounded(world, rng, Split.TRAIN), config):
                yield description
