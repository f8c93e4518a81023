"""The shapes world: a procedural, seeded, infinite source of scenes with exact ground truth.

A scene is 1 to 3 coloured shapes on a plain background, one object per cell of a 3x3 grid (so objects never
overlap), or a short word drawn in a colour for the text-rendering task. Everything a task needs (captions,
questions, edits, masks, boxes) is derived from the symbolic `Scene`, so every metric has an exact answer.

Splits are disjoint by construction: a scene's split is a pure function of its canonical key. Scenes that
contain a held-out (colour, shape) pair form the compositional test split and never appear anywhere else; the
rest are hashed into train / val / test.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import Any, ClassVar

from cm3leon.presets import Presets

RGB = tuple[int, int, int]


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"
    TEST_COMPOSITIONAL = "test_compositional"


@dataclass(frozen=True)
class WorldConfig(Presets):
    """Every constant of the world. Presets: `tiny` (tests) and `shapes` (the demo)."""

    image_size: int = 64
    grid: int = 3
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
    colours: tuple[tuple[str, RGB], ...] = (
        ("red", (220, 40, 40)),
        ("green", (40, 170, 60)),
        ("blue", (40, 90, 230)),
        ("yellow", (240, 215, 40)),
        ("purple", (150, 60, 190)),
        ("orange", (245, 140, 20)),
        ("cyan", (40, 210, 220)),
        ("pink", (250, 130, 190)),
    )
    backgrounds: tuple[tuple[str, RGB], ...] = (
        ("white", (245, 245, 245)),
        ("black", (20, 20, 20)),
        ("gray", (128, 128, 128)),
    )
    # Object extent as a fraction of the cell side: large objects nearly fill their cell; small ones stay
    # big enough that an 8-pixel VQ code grid still resolves their outline.
    sizes: tuple[tuple[str, float], ...] = (("small", 0.6), ("large", 0.88))
    max_objects: int = 3
    # Held out of train/val/test: scenes with any of these pairs form the compositional test split.
    held_out_pairs: tuple[tuple[str, str], ...] = (
        ("red", "triangle"),
        ("blue", "star"),
        ("green", "circle"),
        ("yellow", "diamond"),
        ("purple", "square"),
    )
    # Percent of the non-held-out scene space given to val and test (the rest is train).
    val_percent: int = 10
    test_percent: int = 10
    # Fraction of sampled scenes that are text-rendering scenes (a word instead of shapes).
    text_scene_fraction: float = 0.0
    max_word_length: int = 3
    # Discrete coordinate bins for grounded generation (boxes are quantised to this many bins per axis).
    location_bins: int = 16

    # The world is cheap, so tests (`tiny`) use the same one as the demo; only models get smaller.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"shapes": {}, "tiny": {}, "shapes32": dict(image_size=32)}

    @cached_property
    def colour_rgb(self) -> dict[str, RGB]:
        return dict(self.colours)

    @cached_property
    def background_rgb(self) -> dict[str, RGB]:
        return dict(self.backgrounds)

    @cached_property
    def size_fraction(self) -> dict[str, float]:
        return dict(self.sizes)

    @property
    def colour_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.colours)

    @property
    def background_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.backgrounds)

    @property
    def size_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.sizes)

    @property
    def num_cells(self) -> int:
        return self.grid * self.grid

    @property
    def cell_size(self) -> float:
        return self.image_size / self.grid

    def cell_box(self, cell: int) -> tuple[int, int, int, int]:
        """Pixel box (x0, y0, x1, y1), end exclusive, of a grid cell; cells tile the image exactly."""
        row, col = divmod(cell, self.grid)
        x0, x1 = round(col * self.cell_size), round((col + 1) * self.cell_size)
        y0, y1 = round(row * self.cell_size), round((row + 1) * self.cell_size)
        return x0, y0, x1, y1

    def cell_centre(self, cell: int) -> tuple[float, float]:
        row, col = divmod(cell, self.grid)
        return (col + 0.5) * self.cell_size, (row + 0.5) * self.cell_size

    def cell_of_pixel(self, x: float, y: float) -> int:
        """The grid cell holding the pixel at column x, row y (fractional, e.g. a region's centre of mass), as
        `cell_box` assigns pixels: a pixel belongs where its centre (index + 0.5) lies."""
        col = min(max(int((x + 0.5) // self.cell_size), 0), self.grid - 1)
        row = min(max(int((y + 0.5) // self.cell_size), 0), self.grid - 1)
        return row * self.grid + col

    def position_name(self, cell: int) -> str:
        row, col = divmod(cell, self.grid)
        if self.grid != 3:
            return f"row {row + 1} column {col + 1}"
        vertical = ("top", "middle", "bottom")[row]
        horizontal = ("left", "center", "right")[col]
        if vertical == "middle" and horizontal == "center":
            return "center"
        return f"{vertical} {horizontal}"

    @cached_property
    def position_names(self) -> tuple[str, ...]:
        return tuple(self.position_name(c) for c in range(self.num_cells))


@dataclass(frozen=True, order=True)
class SceneObject:
    cell: int
    shape: str
    colour: str
    size: str

    def describe(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """The symbolic scene: the ground truth every task and metric is derived from."""

    background: str
    objects: tuple[SceneObject, ...] = ()
    word: str | None = None
    word_colour: str | None = None

    def __post_init__(self) -> None:
        cells = [o.cell for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell: {self.objects}")
        # Canonical order (reading order of cells) so equal scenes compare equal.
        object.__setattr__(self, "objects", tuple(sorted(self.objects)))

    @property
    def is_text(self) -> bool:
        return self.word is not None

    def key(self) -> str:
        if self.is_text:
            return f"{self.background}|word:{self.word}:{self.word_colour}"
        parts = [f"{o.cell}:{o.size}:{o.colour}:{o.shape}" for o in self.objects]
        return f"{self.background}|" + ",".join(parts)

    def object_at(self, cell: int) -> SceneObject | None:
        return next((o for o in self.objects if o.cell == cell), None)

    def with_objects(self, objects: tuple[SceneObject, ...]) -> Scene:
        return replace(self, objects=objects)

    def empty_cells(self, config: WorldConfig) -> list[int]:
        taken = {o.cell for o in self.objects}
        return [c for c in range(config.num_cells) if c not in taken]


def _stable_percent(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 100


def split_of(scene: Scene, config: WorldConfig) -> Split:
    """The split a scene belongs to: a pure function of the scene, so splits can never overlap."""
    held_out = set(config.held_out_pairs)
    if any((o.colour, o.shape) in held_out for o in scene.objects):
        return Split.TEST_COMPOSITIONAL
    percent = _stable_percent(scene.key())
    if percent < config.test_percent:
        return Split.TEST
    if percent < config.test_percent + config.val_percent:
        return Split.VAL
    return Split.TRAIN


@dataclass
class World:
    """Samples scenes of one split. `World(config).sample(rng, split)` is deterministic given the rng state."""

    config: WorldConfig = field(default_factory=WorldConfig)

    def random_object(self, rng: random.Random, cell: int) -> SceneObject:
        cfg = self.config
        return SceneObject(
            cell=cell,
            shape=rng.choice(cfg.shapes),
            colour=rng.choice(cfg.colour_names),
            size=rng.choice(cfg.size_names),
        )

    def _random_shapes_scene(self, rng: random.Random, num_objects: int | None) -> Scene:
        cfg = self.config
        n = num_objects if num_objects is not None else rng.randint(1, cfg.max_objects)
        cells = rng.sample(range(cfg.num_cells), n)
        objects = tuple(self.random_object(rng, c) for c in cells)
        return Scene(background=rng.choice(cfg.background_names), objects=objects)

    def _random_text_scene(self, rng: random.Random) -> Scene:
        cfg = self.config
        length = rng.randint(1, cfg.max_word_length)
        word = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(length))
        return Scene(background=rng.choice(cfg.background_names), word=word, word_colour=rng.choice(cfg.colour_names))

    def sample(
        self,
        rng: random.Random,
        split: Split | str = Split.TRAIN,
        num_objects: int | None = None,
        text: bool | None = None,
    ) -> Scene:
        """A scene of `split`, by rejection: scenes are drawn from the whole world until one falls in the split.

        Text scenes have no held-out pairs, so for the compositional split they are never drawn.
        """
        split = Split(split)
        want_text = text if text is not None else rng.random() < self.config.text_scene_fraction
        if split is Split.TEST_COMPOSITIONAL:
            want_text = False
        for _ in range(10_000):
            scene = self._random_text_scene(rng) if want_text else self._random_shapes_scene(rng, num_objects)
            if split_of(scene, self.config) is split:
                return scene
        raise RuntimeError(f"could not draw a scene of split {split.value} with num_objects={num_objects}")

    def scenes(self, seed: int, split: Split | str, n: int, **kwargs: object) -> list[Scene]:
        rng = random.Random(f"{seed}:{Split(split).value}")
        return [self.sample(rng, split, **kwargs) for _ in range(n)]  # type: ignore[arg-type]
