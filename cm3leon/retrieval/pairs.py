"""Caption-image pairs drawn from the shapes world, for contrastive training and retrieval evaluation.

Hard negatives (optional, `near_miss_fraction`): recall@1 over a gallery of 1,000 test scenes hinges on fine
distinctions (a one-object query has a couple of gallery scenes that differ from it in one attribute), while
random scenes in a batch differ in many. A near miss is a scene plus a sibling that differs in exactly one
attribute (one object's shape, colour, size or cell, the background, one object more or less; a text scene's
letter, colour or background), so those distinctions appear in every batch. Siblings are drawn from the same
split only, so no val/test scene leaks into training. They are a knob, not a necessity: after a short run,
recall@1 came out level with and without them.

Each batch is a pure function of (seed, batch index), so a resumed run draws exactly the batches it would
have drawn, with no data state in the checkpoint.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, replace

import numpy as np

from cm3leon.data.language import detailed_caption, short_caption
from cm3leon.data.render import render
from cm3leon.data.world import Scene, SceneObject, Split, World, split_of
from cm3leon.retrieval.contrastive import image_match_keys, scene_match_key, short_match_key


@dataclass(frozen=True, eq=False)
class CaptionedImage:
    scene: Scene
    image: np.ndarray  # (H, W, 3) uint8
    text: str
    text_key: str  # what the text determines (see `contrastive.py`)

    @property
    def image_keys(self) -> tuple[str, str]:
        return image_match_keys(self.scene)


# A near miss is redrawn this many times before giving up on it (e.g. every sibling fell in another split).
NEAR_MISS_DRAWS = 20
LETTERS = string.ascii_uppercase


def _changed_object(scene: Scene, world: World, rng: random.Random) -> Scene:
    """`scene` with one attribute of one object changed, or one object added or removed."""
    cfg = world.config
    obj = rng.choice(scene.objects)
    others = tuple(o for o in scene.objects if o is not obj)
    empty = scene.empty_cells(cfg)
    kinds = ["shape", "colour", "size", *(["cell"] if empty else []), *(["remove"] if others else [])]
    if empty and len(scene.objects) < cfg.max_objects:
        kinds.append("add")
    kind = rng.choice(kinds)
    if kind == "shape":
        return scene.with_objects((*others, replace(obj, shape=rng.choice([s for s in cfg.shapes if s != obj.shape]))))
    if kind == "colour":
        colour = rng.choice([c for c in cfg.colour_names if c != obj.colour])
        return scene.with_objects((*others, replace(obj, colour=colour)))
    if kind == "size":
        return scene.with_objects(
            (*others, replace(obj, size=rng.choice([s for s in cfg.size_names if s != obj.size])))
        )
    if kind == "cell":
        return scene.with_objects((*others, replace(obj, cell=rng.choice(empty))))
    if kind == "add":
        added: SceneObject = world.random_object(rng, rng.choice(empty))
        return scene.with_objects((*scene.objects, added))
    return scene.with_objects(others)


def _changed_text(scene: Scene, world: World, rng: random.Random) -> Scene:
    assert scene.word is not None
    kind = rng.choice(("letter", "colour"))
    if kind == "letter":
        index = rng.randrange(len(scene.word))
        letter = rng.choice([c for c in LETTERS if c != scene.word[index]])
        return replace(scene, word=scene.word[:index] + letter + scene.word[index + 1 :])
    return replace(scene, word_colour=rng.choice([c for c in world.config.colour_names if c != scene.word_colour]))


def near_miss(scene: Scene, world: World, rng: random.Random, split: Split | str) -> Scene | None:
    """A scene of `split` that differs from `scene` in exactly one attribute; None if none was found."""
    split = Split(split)
    for _ in range(NEAR_MISS_DRAWS):
        if rng.random() < 1 / (len(scene.objects) + 2):  # the background is one attribute among the objects'
            background = rng.choice([b for b in world.config.background_names if b != scene.background])
            sibling = replace(scene, background=background)
        else:
            sibling = _changed_text(scene, world, rng) if scene.is_text else _changed_object(scene, world, rng)
        if sibling.key() != scene.key() and split_of(sibling, world.config) is split:
            return sibling
    return None


def caption_pair(scene: Scene, world: World, rng: random.Random, short_caption_fraction: float) -> CaptionedImage:
    """`scene`'s image with a short caption (with probability `short_caption_fraction`) or a detailed one."""
    image = render(scene, world.config).image
    if rng.random() < short_caption_fraction:
        return CaptionedImage(scene, image, short_caption(scene, world.config, rng), short_match_key(scene))
    return CaptionedImage(scene, image, detailed_caption(scene, world.config, rng), scene_match_key(scene))


def draw_pair(
    world: World, rng: random.Random, split: Split | str, short_caption_fraction: float, text_scene_fraction: float
) -> CaptionedImage:
    scene = world.sample(rng, split, text=rng.random() < text_scene_fraction)
    return caption_pair(scene, world, rng, short_caption_fraction)


def draw_pairs(
    world: World,
    seed: int | str,
    split: Split | str,
    n: int,
    short_caption_fraction: float = 0.0,
    text_scene_fraction: float = 0.0,
    near_miss_fraction: float = 0.0,
) -> list[CaptionedImage]:
    """`n` pairs of `split`, about `near_miss_fraction` of them in (anchor, near miss) twos. The same arguments
    always give the same pairs."""
    rng = random.Random(f"{seed}:{Split(split).value}")
    pairs: list[CaptionedImage] = []
    while len(pairs) < n:
        pair = draw_pair(world, rng, split, short_caption_fraction, text_scene_fraction)
        pairs.append(pair)
        # Each anchor brings one sibling, so anchors are drawn with probability f / (2 - f) to give fraction f.
        if len(pairs) < n and rng.random() < near_miss_fraction / (2.0 - near_miss_fraction):
            sibling = near_miss(pair.scene, world, rng, split)
            if sibling is not None:
                pairs.append(caption_pair(sibling, world, rng, short_caption_fraction))
    return pairs


def stack_images(pairs: list[CaptionedImage]) -> np.ndarray:
    """(N, H, W, 3) uint8."""
    return np.stack([pair.image for pair in pairs])
