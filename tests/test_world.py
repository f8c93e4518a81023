"""The shapes world: determinism, disjoint splits, rendering consistent with the scene, and the sample grid."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from cm3leon.data.grid import labelled_grid, save_grid, wrap_text
from cm3leon.data.render import render, segmentation_classes
from cm3leon.data.samples import sample_grid
from cm3leon.data.world import Scene, SceneObject, Split, World, WorldConfig, split_of

CONFIG = WorldConfig.preset("tiny")
WORLD = World(CONFIG)
CLASS_INDEX = {name: i for i, name in enumerate(segmentation_classes(CONFIG))}


def _mixed_scenes(n: int, seed: int) -> list[Scene]:
    rng = random.Random(seed)
    return [WORLD.sample(rng, Split.TRAIN, text=rng.random() < 0.2) for _ in range(n)]


def test_same_seed_same_scenes_different_seed_different_scenes() -> None:
    first = WORLD.scenes(seed=7, split=Split.TRAIN, n=200)
    again = WORLD.scenes(seed=7, split=Split.TRAIN, n=200)
    other = WORLD.scenes(seed=8, split=Split.TRAIN, n=200)
    assert first == again
    assert sum(a != b for a, b in zip(first, other, strict=True)) > 190
    # Every split draws from its own stream, so the same seed gives different scenes per split.
    assert WORLD.scenes(seed=7, split=Split.VAL, n=50) != first[:50]


def test_splits_are_disjoint_and_compositional_split_holds_out_pairs() -> None:
    held_out = set(CONFIG.held_out_pairs)
    keys: dict[Split, set[str]] = {}
    for split in Split:
        rng = random.Random(f"splits:{split.value}")
        scenes = [WORLD.sample(rng, split, text=rng.random() < 0.1) for _ in range(1500)]
        assert all(split_of(s, CONFIG) is split for s in scenes)
        has_held_out = [any((o.colour, o.shape) in held_out for o in s.objects) for s in scenes]
        if split is Split.TEST_COMPOSITIONAL:
            assert all(has_held_out)
            assert not any(s.is_text for s in scenes)
        else:
            assert not any(has_held_out)
        keys[split] = {s.key() for s in scenes}
        assert len(keys[split]) > 1000  # a rich split, not a handful of repeated scenes
    splits = list(Split)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not keys[a] & keys[b], f"{a.value} and {b.value} share scenes"


def test_val_and_test_take_their_configured_share_of_the_scene_space() -> None:
    rng = random.Random(3)
    scenes = [WORLD._random_shapes_scene(rng, None) for _ in range(4000)]
    counts = defaultdict(int)
    for scene in scenes:
        counts[split_of(scene, CONFIG)] += 1
    non_compositional = len(scenes) - counts[Split.TEST_COMPOSITIONAL]
    assert counts[Split.VAL] / non_compositional == pytest.approx(CONFIG.val_percent / 100, abs=0.025)
    assert counts[Split.TEST] / non_compositional == pytest.approx(CONFIG.test_percent / 100, abs=0.025)


def test_cell_of_pixel_finds_the_cell_of_every_pixel_of_its_box() -> None:
    for cell in range(CONFIG.num_cells):
        x0, y0, x1, y1 = CONFIG.cell_box(cell)
        assert {CONFIG.cell_of_pixel(x, y) for x in range(x0, x1) for y in range(y0, y1)} == {cell}
        assert CONFIG.cell_of_pixel((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2) == cell  # a centre of mass in the middle


def _cell_slices(cell: int) -> tuple[slice, slice]:
    x0, y0, x1, y1 = CONFIG.cell_box(cell)
    return slice(y0, y1), slice(x0, x1)


def test_segmentation_and_image_agree_with_the_scene() -> None:
    areas: dict[tuple[str, str], list[int]] = defaultdict(list)
    for scene in _mixed_scenes(300, seed=11):
        if scene.is_text:
            continue
        rendered = render(scene, CONFIG)
        background_rgb = np.array(CONFIG.background_rgb[scene.background], dtype=np.uint8)
        outside = np.ones(rendered.segmentation.shape, dtype=bool)
        for obj in scene.objects:
            rows, cols = _cell_slices(obj.cell)
            outside[rows, cols] = False
            cell_classes = rendered.segmentation[rows, cols]
            mine = cell_classes == CLASS_INDEX[obj.shape]
            # Only this object's class and background inside its cell.
            assert set(np.unique(cell_classes)) <= {0, CLASS_INDEX[obj.shape]}
            assert mine.any()
            areas[(obj.shape, obj.size)].append(int(mine.sum()))
            cell_image = rendered.image[rows, cols]
            assert (cell_image[mine] == CONFIG.colour_rgb[obj.colour]).all()
            assert (cell_image[~mine] == background_rgb).all()
        assert (rendered.segmentation[outside] == 0).all()
        assert (rendered.image[outside] == background_rgb).all()
    for shape in CONFIG.shapes:
        small, large = areas[(shape, "small")], areas[(shape, "large")]
        assert small and large
        assert max(small) < min(large), f"{shape}: small area {max(small)} >= large area {min(large)}"


def test_text_scene_is_aliased_in_one_colour_and_the_text_class() -> None:
    rendered = render(Scene(background="white", word="QRS", word_colour="blue"), CONFIG)
    text = rendered.segmentation == CLASS_INDEX["text"]
    assert set(np.unique(rendered.segmentation)) == {0, CLASS_INDEX["text"]}
    assert text.sum() > 100
    assert (rendered.image[text] == CONFIG.colour_rgb["blue"]).all()
    assert (rendered.image[~text] == CONFIG.background_rgb["white"]).all()


def test_scene_rejects_two_objects_in_one_cell_and_canonicalises_order() -> None:
    a = SceneObject(cell=4, shape="circle", colour="red", size="small")
    b = SceneObject(cell=0, shape="star", colour="blue", size="large")
    assert Scene("white", (a, b)) == Scene("white", (b, a))
    with pytest.raises(ValueError):
        Scene("white", (a, SceneObject(cell=4, shape="star", colour="red", size="small")))


def test_labelled_grid_layout_and_nearest_upscale() -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:4, :4] = (255, 0, 0)
    grid = labelled_grid([[(image, "one")], [(image, "two"), (image, "a much longer label " * 4)]], scale=4)
    array = np.asarray(grid)
    # Find the first tile's red quarter: NEAREST keeps it a crisp 16x16 block of pure red.
    red = np.all(array == (255, 0, 0), axis=-1)
    ys, xs = np.nonzero(red)
    assert red.sum() == 3 * 16 * 16  # three tiles, one 16x16 red block each
    assert (ys.max() - ys.min()) > 32  # tiles sit on separate rows
    assert grid.width >= 2 * 32 and grid.height > 2 * 32


def test_wrap_text_fits_the_width() -> None:
    font = ImageFont.load_default(size=12)
    lines = wrap_text("a large red circle at the top left and a small blue star " * 3, font, 120)
    assert len(lines) > 3
    assert all(font.getlength(line) <= 120 for line in lines)
    assert " ".join(lines).split() == ("a large red circle at the top left and a small blue star " * 3).split()


def test_save_grid_and_sample_grid_write_pngs(tmp_path: Path) -> None:
    path = save_grid([[(np.zeros((4, 4), bool), "mask")]], tmp_path / "sub" / "g.png", title="t")
    assert path.exists() and Image.open(path).size[0] > 0
    out = sample_grid(n=6, out=tmp_path / "samples.png", split="val", seed=1, text_fraction=0.5)
    picture = Image.open(out)
    assert picture.width > 6 * CONFIG.image_size  # 2 scenes x 2 tiles side by side at least
