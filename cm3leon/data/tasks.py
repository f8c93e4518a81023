"""Structured ground truth of the image tasks: edits, infilling and grounded generation (no tokens here).

Each generator is a small pure function of (world, rng, split) that returns symbolic cases; a later module
formats them into token sequences. Edits are also parsed back symbolically, so an edit instruction has an
exact meaning: `parse_edit_instruction(case.instruction, case.source, config) == case.target`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from cm3leon.data.grammar import world_grammar
from cm3leon.data.language import article, detailed_caption, position_phrase
from cm3leon.data.render import object_box
from cm3leon.data.world import Scene, SceneObject, Split, World, WorldConfig, split_of

PixelBox = tuple[int, int, int, int]  # (x0, y0, x1, y1), end exclusive
BinBox = tuple[int, int, int, int]  # (x0, y0, x1, y1) location bins, both ends inclusive, each in [0, bins)

EDIT_KINDS: tuple[str, ...] = ("recolour", "remove", "add", "move", "resize")
# Rejection sampling gives up after this many draws; val/test edits keep their split ~1 time in 10, so this
# bound is only reached by a broken world config.
MAX_TASK_DRAWS = 10_000
# Infill mostly masks an object (the interesting case) but sometimes an empty cell, so the model also learns
# that an empty cell is filled with plain background.
INFILL_EMPTY_CELL_PROBABILITY = 0.2
MASK_GREY: tuple[int, int, int] = (128, 128, 128)


# --- edits -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditCase:
    instruction: str
    kind: str
    source: Scene
    target: Scene


def referring_expression(obj: SceneObject, scene: Scene, config: WorldConfig) -> str:
    """ "the red circle", adding "at the top left" only when another object shares its colour and shape."""
    twins = [o for o in scene.objects if (o.colour, o.shape) == (obj.colour, obj.shape)]
    name = f"the {obj.colour} {obj.shape}"
    return name if len(twins) == 1 else f"{name} {position_phrase(obj.cell, config)}"


def applicable_edit_kinds(scene: Scene, config: WorldConfig) -> list[str]:
    kinds = ["recolour", "resize"]
    if len(scene.objects) >= 2:
        kinds.append("remove")
    if len(scene.objects) < config.max_objects:
        kinds += ["add", "move"]  # both need an empty cell, which fewer than max_objects guarantees
    return [k for k in EDIT_KINDS if k in kinds]


def propose_edit(world: World, source: Scene, kind: str, rng: random.Random) -> EditCase:
    """One random edit of `kind` on `source` (the split of the target is not checked here)."""
    cfg = world.config
    obj = rng.choice(source.objects)
    ref = referring_expression(obj, source, cfg)
    others = tuple(o for o in source.objects if o is not obj)
    if kind == "recolour":
        colour = rng.choice([c for c in cfg.colour_names if c != obj.colour])
        return EditCase(f"make {ref} {colour}", kind, source, source.with_objects((*others, _with(obj, colour=colour))))
    if kind == "resize":
        size = rng.choice([s for s in cfg.size_names if s != obj.size])
        return EditCase(f"make {ref} {size}", kind, source, source.with_objects((*others, _with(obj, size=size))))
    if kind == "remove":
        return EditCase(f"remove {ref}", kind, source, source.with_objects(others))
    cell = rng.choice(source.empty_cells(cfg))
    if kind == "add":
        new = world.random_object(rng, cell)
        text = f"add {article(new.size)} {new.describe()} {position_phrase(cell, cfg)}"
        return EditCase(text, kind, source, source.with_objects((*source.objects, new)))
    if kind == "move":
        text = f"move {ref} to the {cfg.position_name(cell)}"
        return EditCase(text, kind, source, source.with_objects((*others, _with(obj, cell=cell))))
    raise ValueError(f"unknown edit kind {kind!r}; choose from {EDIT_KINDS}")


def _with(obj: SceneObject, **changes: object) -> SceneObject:
    fields = {"cell": obj.cell, "shape": obj.shape, "colour": obj.colour, "size": obj.size, **changes}
    return SceneObject(**fields)  # type: ignore[arg-type]


def make_edit(world: World, rng: random.Random, split: Split | str) -> EditCase:
    """A random edit whose source and target scenes both lie in `split` (rejection sampled)."""
    split = Split(split)
    for _ in range(MAX_TASK_DRAWS):
        source = world.sample(rng, split, text=False)
        case = propose_edit(world, source, rng.choice(applicable_edit_kinds(source, world.config)), rng)
        if split_of(case.target, world.config) is split:
            return case
    raise RuntimeError(f"could not draw an edit with source and target in split {split.value}")


def edit_touched_cells(source: Scene, target: Scene, config: WorldConfig) -> set[int]:
    """Cells whose content differs between two scenes: the only place an edit may change pixels."""
    return {c for c in range(config.num_cells) if source.object_at(c) != target.object_at(c)}


def _resolve(source: Scene, colour: str, shape: str, position: str | None, config: WorldConfig) -> SceneObject | None:
    matches = [
        o
        for o in source.objects
        if (o.colour, o.shape) == (colour, shape) and (position is None or config.position_name(o.cell) == position)
    ]
    return matches[0] if len(matches) == 1 else None


def parse_edit_instruction(text: str, source: Scene, config: WorldConfig) -> Scene | None:
    """Apply an edit instruction to `source` symbolically; None if it names no unique object or is invalid."""
    grammar, text = world_grammar(config), " ".join(text.lower().split())
    cell_of = {name: cell for cell, name in enumerate(config.position_names)}
    try:
        if match := grammar.add.search(text):
            size, colour, shape, position = match.groups()
            new = SceneObject(cell=cell_of[position], shape=shape, colour=colour, size=size)
            return source.with_objects((*source.objects, new))  # raises if the cell is taken
        for pattern in (grammar.change, grammar.remove, grammar.move):
            if match := pattern.search(text):
                break
        else:
            return None
        obj = _resolve(source, *match.groups()[:3], config)
        if obj is None:
            return None
        others = tuple(o for o in source.objects if o is not obj)
        if pattern is grammar.remove:
            return source.with_objects(others) if others else None
        value = match.group(4)
        if pattern is grammar.move:
            return source.with_objects((*others, _with(obj, cell=cell_of[value])))
        field = "colour" if value in config.colour_names else "size"
        return source.with_objects((*others, _with(obj, **{field: value})))
    except ValueError:  # e.g. moving onto an occupied cell
        return None


# --- infilling -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InfillCase:
    scene: Scene
    region: PixelBox  # one grid cell, from config.cell_box
    caption: str


def make_infill(world: World, rng: random.Random, split: Split | str) -> InfillCase:
    """A scene of `split`, one of its cells to mask (usually an occupied one), and its detailed caption."""
    cfg = world.config
    scene = world.sample(rng, split, text=False)
    empty = scene.empty_cells(cfg)
    if empty and rng.random() < INFILL_EMPTY_CELL_PROBABILITY:
        cell = rng.choice(empty)
    else:
        cell = rng.choice(scene.objects).cell
    return InfillCase(scene=scene, region=cfg.cell_box(cell), caption=detailed_caption(scene, cfg, rng))


def masked_image(image: np.ndarray, region: PixelBox, fill: tuple[int, int, int] = MASK_GREY) -> np.ndarray:
    """A copy of an HxWx3 image with the pixel box `region` painted a flat `fill` colour."""
    x0, y0, x1, y1 = region
    masked = image.copy()
    masked[y0:y1, x0:x1] = np.asarray(fill, dtype=image.dtype)
    return masked


# --- grounded generation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundedSpec:
    scene: Scene
    boxes: tuple[BinBox, ...]  # one per scene.objects entry, same order


def quantise_box(box: PixelBox, config: WorldConfig) -> BinBox:
    """The location bins covering a pixel box in the world's images."""
    return bins_of(box, config.location_bins, config.image_size)


def bins_of(box: PixelBox, bins: int, size: int) -> BinBox:
    """The location bins (`bins` per side) covering a pixel box of a `size` px image: bin of the first pixel to bin
    of the last one (inclusive)."""
    x0, y0, x1, y1 = box
    return x0 * bins // size, y0 * bins // size, (x1 - 1) * bins // size, (y1 - 1) * bins // size


def boxes_to_pixels(bins_box: BinBox, config: WorldConfig) -> PixelBox:
    """Pixel box (end exclusive) of every pixel whose bin lies in `bins_box`; contains the quantised box."""
    bins, size = config.location_bins, config.image_size

    def start(b: int) -> int:  # first pixel x with x * bins // size == b, i.e. ceil(b * size / bins)
        return -(-b * size // bins)

    x0, y0, x1, y1 = bins_box
    return start(x0), start(y0), start(x1 + 1), start(y1 + 1)


def grounded_spec_of_scene(scene: Scene, config: WorldConfig) -> GroundedSpec:
    """The scene's objects with the location bins of their drawn boxes: the grounded prompt that asks for it."""
    return GroundedSpec(scene=scene, boxes=tuple(quantise_box(object_box(o, config), config) for o in scene.objects))


def make_grounded(world: World, rng: random.Random, split: Split | str) -> GroundedSpec:
    return grounded_spec_of_scene(world.sample(rng, split, text=False), world.config)


def grounded_text(spec: GroundedSpec, config: WorldConfig) -> list[tuple[BinBox, str]]:
    """Each object's bin box with its description ("large red circle"), in reading order."""
    return [(box, obj.describe()) for box, obj in zip(spec.boxes, spec.scene.objects, strict=True)]
