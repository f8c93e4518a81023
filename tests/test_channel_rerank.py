"""Noisy-channel caption reranking with the shipped shapes model: the true caption beats a near miss."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import detailed_caption
from cm3leon.data.world import Scene, Split, World
from cm3leon.decoding import ChannelScorer, GenerationRequest, document_prompt_ids
from cm3leon.evaluation.caption_eval import encode_scene_images

SHAPES = Path(__file__).resolve().parents[1] / "models" / "shapes"
CASES = 12


@pytest.fixture(scope="module")
def shipped() -> ModelBundle:
    return ModelBundle.load(SHAPES, require_vq=True)


def recoloured(scene: Scene, rng: random.Random, colours: tuple[str, ...]) -> Scene:
    """The scene with one object in another colour: a caption of it is wrong about one attribute only."""
    index = rng.randrange(len(scene.objects))
    target = scene.objects[index]
    colour = rng.choice([name for name in colours if name != target.colour])
    objects = list(scene.objects)
    objects[index] = dataclasses.replace(target, colour=colour)
    return dataclasses.replace(scene, objects=tuple(objects))


def test_the_caption_that_describes_the_image_wins(shipped: ModelBundle) -> None:
    world, vocab = World(shipped.world), shipped.vocab
    rng = random.Random(5)
    scenes = [world.sample(rng, Split.TEST) for _ in range(CASES)]
    images = encode_scene_images(shipped, scenes, batch_size=CASES)
    scorer = ChannelScorer(shipped.model, vocab)
    wins = 0
    for scene, image in zip(scenes, images, strict=True):
        phrasing = rng.randrange(1 << 30)  # both captions in the same words: only the colour differs
        true, wrong = (
            detailed_caption(candidate, shipped.world, random.Random(phrasing))
            for candidate in (scene, recoloured(scene, rng, shipped.world.colour_names))
        )
        prompt = document_prompt_ids(vocab, [image], "text")
        candidates = [[*vocab.encode_text(caption), vocab.eos_id] for caption in (wrong, true)]
        scores = scorer(GenerationRequest(prompt_ids=prompt, target="text"), prompt, candidates)
        wins += scores[1] > scores[0]
    assert wins >= CASES - 1
