"""Task ground truth: edits, infilling and grounded boxes, checked symbolically and against rendered pixels."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from cm3leon.data.language import parse_caption
from cm3leon.data.render import render, segmentation_classes
from cm3leon.data.tasks import (
    EDIT_KINDS,
    EditCase,
    boxes_to_pixels,
    edit_touched_cells,
    grounded_text,
    make_edit,
    make_grounded,
    make_infill,
    masked_image,
    parse_edit_instruction,
    quantise_box,
    referring_expression,
)
from cm3leon.data.world import Scene, SceneObject, Split, World, WorldConfig, split_of

CONFIG = WorldConfig.preset("tiny")
WORLD = World(CONFIG)
CLASS_INDEX = {name: i for i, name in enumerate(segmentation_classes(CONFIG))}


def _edits(split: Split, n: int, seed: int) -> list[EditCase]:
    rng = random.Random(f"{seed}:{split.value}")
    return [make_edit(WORLD, rng, split) for _ in range(n)]


@pytest.mark.parametrize("split", list(Split))
def test_edits_stay_in_split_and_parse_back_to_their_target(split: Split) -> None:
    kinds: Counter[str] = Counter()
    for case in _edits(split, 150, seed=0):
        kinds[case.kind] += 1
        assert split_of(case.source, CONFIG) is split and split_of(case.target, CONFIG) is split
        assert not case.source.is_text
        assert parse_edit_instruction(case.instruction, case.source, CONFIG) == case.target, case.instruction
        n_source, n_target = len(case.source.objects), len(case.target.objects)
        assert n_target == n_source + {"add": 1, "remove": -1}.get(case.kind, 0)
        if case.kind == "remove":
            assert n_source >= 2
        if case.kind == "add":
            assert n_source < CONFIG.max_objects
    assert set(kinds) == set(EDIT_KINDS)


def test_edit_changes_pixels_only_inside_the_touched_cells() -> None:
    for case in _edits(Split.TRAIN, 200, seed=1):
        touched = edit_touched_cells(case.source, case.target, CONFIG)
        assert len(touched) == (2 if case.kind == "move" else 1)
        changed = np.any(render(case.source, CONFIG).image != render(case.target, CONFIG).image, axis=-1)
        inside = np.zeros_like(changed)
        for cell in touched:
            x0, y0, x1, y1 = CONFIG.cell_box(cell)
            inside[y0:y1, x0:x1] = True
            assert changed[y0:y1, x0:x1].any(), f"{case.instruction}: cell {cell} did not change"
        assert not (changed & ~inside).any(), case.instruction


def test_instructions_name_position_only_when_colour_and_shape_are_ambiguous() -> None:
    twin_a = SceneObject(cell=0, shape="circle", colour="red", size="large")
    twin_b = SceneObject(cell=8, shape="circle", colour="red", size="small")
    lone = SceneObject(cell=4, shape="star", colour="blue", size="small")
    scene = Scene("white", (twin_a, twin_b, lone))
    assert referring_expression(lone, scene, CONFIG) == "the blue star"
    assert referring_expression(twin_a, scene, CONFIG) == "the red circle at the top left"

    def parse(text: str) -> Scene | None:
        return parse_edit_instruction(text, scene, CONFIG)

    assert parse("make the red circle at the bottom right blue") == Scene(
        "white", (twin_a, SceneObject(8, "circle", "blue", "small"), lone)
    )
    assert parse("make the red circle at the top left small") == Scene(
        "white", (SceneObject(0, "circle", "red", "small"), twin_b, lone)
    )
    assert parse("please remove the blue star now") == Scene("white", (twin_a, twin_b))
    assert parse("move the blue star to the top right") == Scene(
        "white", (twin_a, twin_b, SceneObject(2, "star", "blue", "small"))
    )
    assert parse("make the red circle blue") is None  # ambiguous without a position
    assert parse("remove the green square") is None  # no such object
    assert parse("move the blue star to the top left") is None  # occupied
    assert parse("add a small green square at the center") is None  # occupied
    assert parse("add a small green square at the top center") == Scene(
        "white", (twin_a, twin_b, lone, SceneObject(1, "square", "green", "small"))
    )
    assert parse("paint it all black") is None


def test_infill_masks_a_cell_usually_occupied_and_captions_the_scene() -> None:
    rng = random.Random(2)
    occupied = 0
    cases = [make_infill(WORLD, rng, Split.VAL) for _ in range(300)]
    boxes = {CONFIG.cell_box(c): c for c in range(CONFIG.num_cells)}
    for case in cases:
        assert split_of(case.scene, CONFIG) is Split.VAL
        assert case.region in boxes
        occupied += case.scene.object_at(boxes[case.region]) is not None
        assert parse_caption(case.caption, CONFIG) == case.scene
    assert 0.7 < occupied / len(cases) < 0.95

    image = render(cases[0].scene, CONFIG).image
    x0, y0, x1, y1 = cases[0].region
    masked = masked_image(image, cases[0].region)
    assert (masked[y0:y1, x0:x1] == (128, 128, 128)).all()
    outside = np.ones(image.shape[:2], dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert (masked[outside] == image[outside]).all()
    assert not (image[y0:y1, x0:x1] == (128, 128, 128)).all() or cases[0].scene.background == "gray"
    assert masked is not image and not np.shares_memory(masked, image)


def test_grounded_boxes_contain_the_object_pixels_and_are_tight() -> None:
    rng = random.Random(3)
    bin_pixels = CONFIG.image_size / CONFIG.location_bins
    for _ in range(200):
        spec = make_grounded(WORLD, rng, Split.TRAIN)
        assert split_of(spec.scene, CONFIG) is Split.TRAIN
        segmentation = render(spec.scene, CONFIG).segmentation
        texts = grounded_text(spec, CONFIG)
        assert [t for _, t in texts] == [o.describe() for o in spec.scene.objects]
        for (bins, _), obj in zip(texts, spec.scene.objects, strict=True):
            assert all(0 <= b < CONFIG.location_bins for b in bins)
            assert bins[0] <= bins[2] and bins[1] <= bins[3]
            cx0, cy0, cx1, cy1 = CONFIG.cell_box(obj.cell)
            ys, xs = np.nonzero(segmentation[cy0:cy1, cx0:cx1] == CLASS_INDEX[obj.shape])
            ys, xs = ys + cy0, xs + cx0
            x0, y0, x1, y1 = boxes_to_pixels(bins, CONFIG)
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
            # Tight: each side at most one bin away from the object's extreme pixel.
            assert xs.min() - x0 < bin_pixels and x1 - xs.max() - 1 < bin_pixels
            assert ys.min() - y0 < bin_pixels and y1 - ys.max() - 1 < bin_pixels


def test_quantisation_round_trips_for_uneven_bins() -> None:
    config = WorldConfig(image_size=50, location_bins=16)  # 50 / 16 pixels per bin: not an integer
    for x0 in range(0, 50, 3):
        for x1 in range(x0 + 1, 51, 5):
            bins = quantise_box((x0, x0, x1, x1), config)
            px0, _, px1, _ = boxes_to_pixels(bins, config)
            assert px0 <= x0 and x1 <= px1
            assert quantise_box((px0, px0, px1, px1), config) == bins
