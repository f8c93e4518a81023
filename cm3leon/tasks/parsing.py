"""Reading task prompts and outputs back: answers, completed infill images, grounded specs, segmentation maps.

Image outputs become pixels through the VQ decoder and then a `Scene` through the oracle (the caller holds
both); segmentation pictures become a per-pixel class map with the world's fixed legend (nearest legend colour).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from cm3leon.data.render import segmentation_classes, segmentation_from_image
from cm3leon.data.tasks import GroundedSpec, boxes_to_pixels
from cm3leon.data.world import Scene, SceneObject, WorldConfig
from cm3leon.objectives.cm3 import CM3Masker
from cm3leon.tasks.formats import ANSWER_PREFIX, GROUNDED_HEADER, QUESTION_PREFIX
from cm3leon.tokenizers.vocab import ImageCodes, Locations, Vocabulary

_QUESTION = re.compile(rf"^{re.escape(QUESTION_PREFIX)} (.*) {re.escape(ANSWER_PREFIX)}(?: (.*))?$", re.S)


def until_eos(ids: Sequence[int], vocab: Vocabulary) -> list[int]:
    ids = list(ids)
    return ids[: ids.index(vocab.eos_id)] if vocab.eos_id in ids else ids


def text_answer(output: Sequence[int], vocab: Vocabulary) -> str:
    """The generated answer text (up to `<eos>`), whitespace-normalised."""
    return " ".join(vocab.decode_text(until_eos(output, vocab)).split())


def question_and_answer(text: str) -> tuple[str, str | None] | None:
    """("how many ...?", "2") of "Question: how many ...? Answer: 2" (answer None when absent)."""
    match = _QUESTION.match(text.strip())
    return (match.group(1), match.group(2)) if match else None


def image_output(output: Sequence[int], vocab: Vocabulary) -> ImageCodes | None:
    """The image block at the start of a generated image output, or None when it is not a whole block."""
    block = list(output[: vocab.codes_per_image])
    if len(block) != vocab.codes_per_image or any(token not in vocab.image_ids for token in block):
        return None
    return vocab.decode_image(block)


def infill_result(prompt: Sequence[int], output: Sequence[int], vocab: Vocabulary) -> ImageCodes | None:
    """The completed image of an infill example: the prompt's sentinels replaced by the generated spans."""
    try:
        document = CM3Masker(vocab).reassemble([*prompt, *output])
        images = [s for s in vocab.decode_document(document) if isinstance(s, ImageCodes)]
    except ValueError:  # a span of the wrong length or a missing sentinel
        return None
    return images[0] if len(images) == 1 else None


def grounded_spec(prompt: Sequence[int], vocab: Vocabulary, world: WorldConfig) -> GroundedSpec | None:
    """Parse a grounded prompt back into its scene (cell = the grid cell holding the box centre) and boxes."""
    segments = vocab.decode_document(prompt)
    if not segments or not isinstance(segments[-1], str) or len(segments) % 2 == 0:
        return None
    background = re.search(r" on an? (\w+) background$", segments[-1])
    if background is None:
        return None
    descriptions = [s for s in segments[:-1:2] if isinstance(s, str)]
    boxes = [s.bins for s in segments[1::2] if isinstance(s, Locations)]
    if len(descriptions) != len(boxes) or not descriptions[0].startswith(GROUNDED_HEADER):
        return None
    pattern = re.compile(r"(\w+) (\w+) (\w+)$")
    objects = []
    for text, box in zip(descriptions, boxes, strict=True):
        match = pattern.search(text)
        if match is None or len(box) != 4:
            return None
        x0, y0, x1, y1 = boxes_to_pixels(box, world)  # type: ignore[arg-type]
        col, row = int((x0 + x1) / 2 // world.cell_size), int((y0 + y1) / 2 // world.cell_size)
        size, colour, shape = match.groups()
        objects.append(SceneObject(cell=row * world.grid + col, shape=shape, colour=colour, size=size))
    try:
        scene = Scene(background=background.group(1), objects=tuple(objects))
    except ValueError:
        return None
    by_object = dict(zip(objects, boxes, strict=True))
    return GroundedSpec(scene, tuple(by_object[o] for o in scene.objects))  # type: ignore[misc]


def segmentation_map(picture: np.ndarray, world: WorldConfig) -> np.ndarray:
    """Per-pixel class ids (H, W) of a colour-coded segmentation picture, by the world's fixed legend."""
    return segmentation_from_image(picture, world)


def segmentation_scores(predicted: np.ndarray, truth: np.ndarray, world: WorldConfig) -> tuple[float, float]:
    """(mean IoU over the classes present in either map, pixel accuracy)."""
    ious = []
    for index in range(len(segmentation_classes(world))):
        pred, true = predicted == index, truth == index
        union = int((pred | true).sum())
        if union:
            ious.append(int((pred & true).sum()) / union)
    return float(np.mean(ious)) if ious else 1.0, float((predicted == truth).mean())
