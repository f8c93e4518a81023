"""Serving requests -> the symbolic inputs the task formats (`cm3leon.tasks.formats`) take, in the model's world.

A format takes the world's objects (a `QA`, a `GroundedSpec`, a word `Scene`, pixel boxes); a request carries
free text and normalised boxes. These functions only translate, and refuse (ValueError naming the field) what
the world cannot express, so the job fails with a clear INVALID_ARGUMENT instead of decoding a prompt the model
never saw. No torch here.
"""

from __future__ import annotations

import math
import re
import string

from cm3leon.data.questions import QA, REASONING_KIND
from cm3leon.data.render import object_box
from cm3leon.data.tasks import GroundedSpec, PixelBox, quantise_box
from cm3leon.data.world import Scene, SceneObject, WorldConfig
from cm3leon.kinds import GroundedGeneration, VisualQuestion
from cm3leon.requests import NormBox
from cm3leon.tasks.parsing import question_and_answer

# A float32 box edge meant to lie on a pixel edge lands within this many pixels of it (e.g. 21/64 * 64).
PIXEL_EPSILON = 1e-4
ARTICLES = frozenset({"a", "an", "the"})
VQA_KIND = "vqa"  # the QA kind of a served question: only names the example, the prompt does not carry it
_QUOTED = re.compile(r'"([^"]*)"')
_IN_COLOUR = re.compile(r"\bin (\w+)")
_ON_BACKGROUND = re.compile(r"\bon (?:an? )?(\w+)")


def pixel_box(box: NormBox, world: WorldConfig, field: str = "box") -> PixelBox:
    """The pixels (end exclusive) a normalised box covers in the model's image, at least one pixel each way."""
    size = world.image_size
    x0, y0 = (min(size - 1, max(0, math.floor(v * size + PIXEL_EPSILON))) for v in (box.x0, box.y0))
    x1, y1 = (min(size, max(1, math.ceil(v * size - PIXEL_EPSILON))) for v in (box.x1, box.y1))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{field}: ({box.x0}, {box.y0}, {box.x1}, {box.y1}) covers no pixel of a {size}px image")
    return x0, y0, x1, y1


def question_of(request: VisualQuestion) -> QA:
    """The question as the format wants it; a question sent whole ("Question: ... Answer:") is unwrapped."""
    parsed = question_and_answer(request.question)
    question = parsed[0] if parsed is not None else " ".join(request.question.split())
    return QA(question, "", REASONING_KIND if request.explain else VQA_KIND)


def _words(text: str) -> list[str]:
    return [word for word in re.findall(r"[a-z]+", text.lower()) if word not in ARTICLES]


def size_from_box(box: PixelBox, obj: SceneObject, world: WorldConfig) -> str:
    """The size whose rendered box of `obj` (in its cell) is nearest `box`: the renderer decides, so pixel
    rounding at small image sizes cannot tip a small object into a large one."""

    def distance(size: str) -> int:
        drawn = object_box(SceneObject(obj.cell, obj.shape, obj.colour, size), world)
        return sum(abs(a - b) for a, b in zip(drawn, box, strict=True))

    return min(world.size_names, key=distance)


def grounded_object(description: str, box: PixelBox, world: WorldConfig, field: str) -> SceneObject:
    """"[a] [size] colour shape" -> the object in the grid cell holding the box centre (size from the box if
    not named)."""
    words = _words(description)
    if not 2 <= len(words) <= 3:
        raise ValueError(f"{field}: describe one object as '[size] colour shape', got {description!r}")
    *size, colour, shape = words
    checks = ((size[0] if size else None, world.size_names), (colour, world.colour_names), (shape, world.shapes))
    for word, known in checks:
        if word is not None and word not in known:
            raise ValueError(f"{field}: the model does not know {word!r} (it knows: {', '.join(known)})")
    col = min(world.grid - 1, int((box[0] + box[2]) / 2 // world.cell_size))
    row = min(world.grid - 1, int((box[1] + box[3]) / 2 // world.cell_size))
    obj = SceneObject(row * world.grid + col, shape, colour, size[0] if size else world.size_names[0])
    return obj if size else SceneObject(obj.cell, shape, colour, size_from_box(box, obj, world))


def background_of(text: str, world: WorldConfig, field: str) -> str:
    """The one world background `text` names; the world's first background when `text` is empty."""
    if not text.strip():
        return world.background_names[0]
    named = [name for name in world.background_names if name in _words(text)]
    if len(named) != 1:
        raise ValueError(f"{field}: name one background of {', '.join(world.background_names)}, got {text!r}")
    return named[0]


def grounded_spec_of(request: GroundedGeneration, world: WorldConfig) -> GroundedSpec:
    """The scene the objects make (one per grid cell) and each object's box in location bins."""
    boxes, objects = [], []
    for index, item in enumerate(request.objects):
        field = f"objects[{index}]"
        box = pixel_box(item.box, world, f"{field}.box")
        boxes.append(box)
        objects.append(grounded_object(item.description, box, world, f"{field}.description"))
    try:
        scene = Scene(background_of(request.prompt, world, "prompt"), tuple(objects))
    except ValueError as error:
        raise ValueError(f"objects: the model places one object per grid cell ({error})") from error
    bins = {obj: quantise_box(box, world) for obj, box in zip(objects, boxes, strict=True)}
    return GroundedSpec(scene, tuple(bins[obj] for obj in scene.objects))


def text_scene_of(text: str, world: WorldConfig) -> Scene:
    """A word scene from 'AB', 'AB in blue on black' or the whole training instruction ('draw "AB" in blue on a
    black background'); colour and background default to the world's first ones."""
    quoted = _QUOTED.search(text)
    if quoted is not None:
        word, rest = quoted.group(1), text[: quoted.start()] + text[quoted.end() :]
    else:
        word, _, rest = text.strip().partition(" ")
    word = word.strip().upper()
    alphabet = set(string.ascii_uppercase)
    if not 1 <= len(word) <= world.max_word_length or not set(word) <= alphabet:
        raise ValueError(f"text: the model draws words of 1 to {world.max_word_length} letters A-Z, got {word!r}")
    colour = _named(_IN_COLOUR.search(rest.lower()), world.colour_names, "text: colour")
    background = _named(_ON_BACKGROUND.search(rest.lower()), world.background_names, "text: background")
    return Scene(background=background, word=word, word_colour=colour)


def _named(match: re.Match[str] | None, known: tuple[str, ...], field: str) -> str:
    if match is None:
        return known[0]
    if match.group(1) not in known:
        raise ValueError(f"{field} {match.group(1)!r} is not one of {', '.join(known)}")
    return match.group(1)
