"""How a model of the shapes world reads requests: descriptions as the world's objects in its grid cells, words
as the world's word scenes, segmentation maps as the world's legend classes (`ShapesReader`, registered as the
world's reader, so every path of such a model reads requests the way its training data was written).

These functions only translate, and refuse (ValueError naming the field) what the world cannot express. No torch
here.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import numpy as np

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import text_render_prompt
from cm3leon.data.render import colourise_segmentation, object_box, segmentation_legend
from cm3leon.data.tasks import GroundedSpec, PixelBox, quantise_box
from cm3leon.data.world import Scene, SceneObject, WorldConfig
from cm3leon.inference.policies import reader
from cm3leon.inference.task_inputs import GroundedParts, RequestReader, pixel_box
from cm3leon.kinds import GroundedGeneration, TextRendering
from cm3leon.requests import EngineResult, UnsupportedJobKind
from cm3leon.tasks.formats import grounded_parts
from cm3leon.tasks.parsing import segmentation_map

ARTICLES = frozenset({"a", "an", "the"})
_QUOTED = re.compile(r'"([^"]*)"')
_IN_COLOUR = re.compile(r"\bin (\w+)")
_ON_BACKGROUND = re.compile(r"\bon (?:an? )?(\w+)")


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
        box = pixel_box(item.box, world.image_size, f"{field}.box")
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


def classes_result(classes: np.ndarray, world: WorldConfig, greedy: EngineResult) -> EngineResult:
    """images: [the colour-coded map in the legend's exact colours, the class-id map (grey level = legend index)];
    legend: (class, colour) by index; text: the share of the image of each class present; the token counts and
    seed of the decode that drew it (`greedy`)."""
    legend = list(segmentation_legend(world).items())
    counts = np.bincount(classes.ravel(), minlength=len(legend))[: len(legend)]
    shares = [f"{name}: {n / classes.size:.1%}" for (name, _), n in zip(legend, counts, strict=True) if n]
    return EngineResult(
        images=[colourise_segmentation(classes, world), np.repeat(classes[..., None], 3, axis=-1)],
        legend=legend, text="; ".join(shares), prompt_tokens=greedy.prompt_tokens,
        generated_tokens=greedy.generated_tokens, seed=greedy.seed,
    )


@dataclass(frozen=True)
class ShapesReader(RequestReader):
    """Requests read in the shapes world's symbols (see the module docstring)."""

    world: WorldConfig = WorldConfig()

    def grounded(self, request: GroundedGeneration) -> GroundedParts:
        return grounded_parts(grounded_spec_of(request, self.world))

    def text_instruction(self, request: TextRendering) -> str:
        return text_render_prompt(text_scene_of(request.text, self.world), self.world)

    def segmentation_result(self, greedy: EngineResult) -> EngineResult:
        return classes_result(segmentation_map(greedy.images[0], self.world), self.world, greedy)


def world_of(bundle: ModelBundle, kind: str) -> WorldConfig:
    """The bundle's world; UnsupportedJobKind for `kind` on a model without one (a shapes policy needs it)."""
    if bundle.world is None:
        raise UnsupportedJobKind(kind, f"{bundle.directory} records no world, which the shapes policies need")
    return bundle.world


@reader("shapes")
def shapes_reader(bundle: ModelBundle) -> ShapesReader:
    world = bundle.world
    if world is None:  # `reader_for` reads a world-less model generically
        raise ValueError(f"{bundle.directory} records no world for the shapes world's reader")
    return ShapesReader(world.image_size, world.location_bins, world)
