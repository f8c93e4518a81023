"""`cm3leon data sample`: a labelled picture of random scenes, to eyeball the world and its ground truth."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from cm3leon.data.grid import Tile, save_grid
from cm3leon.data.language import detailed_caption
from cm3leon.data.render import render, segmentation_classes, segmentation_legend
from cm3leon.data.world import Split, World, WorldConfig

# Two tiles per scene (image, segmentation); this many scenes per grid row keeps the PNG about screen wide.
SCENES_PER_ROW = 3
LEGEND_SWATCH_PIXELS = 16


def _legend_row(config: WorldConfig) -> list[Tile]:
    """One flat swatch per segmentation class, labelled with the class name."""
    return [
        (np.full((LEGEND_SWATCH_PIXELS, LEGEND_SWATCH_PIXELS, 3), rgb, dtype=np.uint8), f"segmentation: {name}")
        for name, rgb in segmentation_legend(config).items()
    ]


def sample_grid(
    n: int,
    out: Path,
    split: Split | str = Split.TRAIN,
    seed: int = 0,
    text_fraction: float = 0.0,
    world_preset: str = "shapes",
) -> Path:
    """Write a grid of `n` scenes of `split`: per scene its image (labelled with the detailed caption) and its
    colour-coded segmentation (labelled with the classes present), then a row with the segmentation legend."""
    config = replace(WorldConfig.preset(world_preset), text_scene_fraction=text_fraction)
    scenes = World(config).scenes(seed, split, n)
    classes = segmentation_classes(config)
    tiles: list[Tile] = []
    for scene in scenes:
        rendered = render(scene, config)
        present = [classes[i] for i in np.unique(rendered.segmentation) if i != 0]
        tiles.append((rendered.image, detailed_caption(scene, config)))
        tiles.append((rendered.segmentation_image, "segmentation: " + (", ".join(present) or "background only")))
    tiles_per_row = 2 * SCENES_PER_ROW
    rows = [tiles[i : i + tiles_per_row] for i in range(0, len(tiles), tiles_per_row)]
    rows.append(_legend_row(config))
    title = f"{n} {Split(split).value} scenes, seed {seed}, text fraction {text_fraction:g}"
    return save_grid(rows, out, title=title)
