"""Segmentation maps checked against a caption (policies.shapes.segmentation): the objects of a map (shape and cell)
read the true map's exactly, ignore specks and tell shapes in swapped cells apart, captions give their placed shapes
(none for word scenes or noise), and the decoding loop redraws exactly the maps that disagree, keeps what agrees,
and is reproducible by seed."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import detailed_caption_variants, text_render_prompt
from cm3leon.data.render import render, segmentation_classes
from cm3leon.data.world import Split, World, WorldConfig
from cm3leon.decoding import GenerationRequest, SamplingParams
from cm3leon.evaluation.task_cases import TaskEvalConfig, build_cases, formatter
from cm3leon.policies.shapes.segmentation import (
    AgreementScorer,
    SegmentationParams,
    caption_objects,
    min_region_pixels,
    region_objects,
    segment_images,
)

SHAPES = WorldConfig.preset("shapes")


def placed_shapes(scene: object) -> Counter[tuple[int, str]]:
    return Counter((obj.cell, obj.shape) for obj in scene.objects)  # type: ignore[attr-defined]


def test_region_objects_read_every_true_map_exactly() -> None:
    scenes = World(SHAPES).scenes(0, Split.TEST, 300, text=False)
    for scene in scenes:
        assert region_objects(render(scene, SHAPES).segmentation, SHAPES) == placed_shapes(scene), scene


def test_the_right_shapes_in_swapped_cells_disagree() -> None:
    """What counting shapes alone let through: two objects' classes swapped keep the map's shape counts."""
    scene = next(s for s in World(SHAPES).scenes(4, Split.TEST, 100, text=False)
                 if len(s.objects) == 2 and s.objects[0].shape != s.objects[1].shape)
    first, second = scene.objects
    classes = render(scene, SHAPES).segmentation
    names = segmentation_classes(SHAPES)
    swapped = classes.copy()
    swapped[classes == names.index(first.shape)] = names.index(second.shape)
    swapped[classes == names.index(second.shape)] = names.index(first.shape)
    objects = region_objects(swapped, SHAPES)
    assert Counter(shape for _, shape in objects.elements()) == Counter(o.shape for o in scene.objects)
    assert objects != placed_shapes(scene)
    assert objects[(first.cell, second.shape)] >= 1 and objects[(second.cell, first.shape)] >= 1


def test_region_objects_ignore_specks_but_count_a_stray_object() -> None:
    scene = World(SHAPES).scenes(1, Split.TEST, 1, text=False)[0]
    classes = render(scene, SHAPES).segmentation.copy()
    background = np.argwhere(classes == 0)
    star = segmentation_classes(SHAPES).index("star")
    speck = int(np.sqrt(min_region_pixels(SHAPES))) - 1  # a square just under the threshold
    with_speck = classes.copy()
    y, x = background[0]
    with_speck[y : y + speck, x : x + speck] = np.where(classes[y : y + speck, x : x + speck] == 0, star, 0)
    assert region_objects(with_speck, SHAPES) == placed_shapes(scene)
    blob = classes.copy()
    side = int(SHAPES.cell_size * min(SHAPES.size_fraction.values()))
    free = next(c for c in range(SHAPES.num_cells) if c not in {o.cell for o in scene.objects})
    x0, y0, _, _ = SHAPES.cell_box(free)
    blob[y0 : y0 + side, x0 : x0 + side] = star
    assert region_objects(blob, SHAPES) == placed_shapes(scene) + Counter({(free, "star"): 1})


def test_caption_objects_of_every_paraphrase_and_none_without_shapes() -> None:
    for scene in World(SHAPES).scenes(2, Split.TEST, 50, text=False):
        for caption in detailed_caption_variants(scene, SHAPES):
            assert caption_objects(caption, SHAPES) == placed_shapes(scene), caption
    word_scene = World(SHAPES).scenes(2, Split.TEST, 1, text=True)[0]
    assert caption_objects(text_render_prompt(word_scene, SHAPES), SHAPES) is None
    assert caption_objects("a picture of nothing in particular", SHAPES) is None


def test_resampling_needs_a_temperature() -> None:
    greedy = SamplingParams.preset("segmentation")
    caption = SamplingParams.preset("greedy_text")
    assert not SegmentationParams(greedy, caption).checks_caption
    with pytest.raises(ValueError, match="temperature"):
        SegmentationParams(greedy.replace(num_candidates=4), caption)


def test_agreement_scorer_prefers_maps_showing_the_expected_shapes() -> None:
    scenes = World(SHAPES).scenes(3, Split.TEST, 2, text=False)
    maps = {1: render(scenes[0], SHAPES).segmentation, 2: render(scenes[1], SHAPES).segmentation}
    scorer = AgreementScorer({(7, 8): placed_shapes(scenes[1])}, lambda ids: maps[ids[0]], SHAPES)
    request = GenerationRequest(prompt_ids=[7, 8], target="image", params=SamplingParams())
    agrees = placed_shapes(scenes[0]) == placed_shapes(scenes[1])
    assert scorer(request, [7, 8], [[1], [2]]) == [float(agrees), 1.0]


def test_segment_images_redraws_only_disagreeing_maps_and_keeps_agreeing_ones(checkpoint: ModelBundle) -> None:
    world = checkpoint.world
    cases = build_cases(checkpoint, TaskEvalConfig(n=4, batch_size=4))
    prompts = [formatter(checkpoint).segmentation(image, None).prompt for image in cases.images]
    # The scenes' true captions stand in for the model's (an untrained model's captions name no shapes).
    captions = [detailed_caption_variants(scene, world)[0] for scene in cases.scenes]
    captions[-1] = "no shapes named here"
    maps = SamplingParams.preset("segmentation").replace(temperature=1.0, num_candidates=3)
    settings = SegmentationParams(maps, SamplingParams.preset("greedy_text"))

    def segment(seed: int) -> object:
        return segment_images(checkpoint, prompts, cases.images, settings, 2, seed, captions=captions)

    run = segment(0)
    assert any(run.resampled), "an untrained model's greedy maps disagree with true captions: the redraw runs"
    assert run.captions == captions and run.agreed[-1] is None and not run.resampled[-1]
    for i, scene in enumerate(cases.scenes[:-1]):
        greedy_agrees = region_objects(run.greedy_maps[i], world) == placed_shapes(scene)
        assert run.resampled[i] == (not greedy_agrees)
        assert run.agreed[i] == (region_objects(run.maps[i], world) == placed_shapes(scene))
        if not run.agreed[i]:
            assert np.array_equal(run.maps[i], run.greedy_maps[i]), "no agreeing sample: the greedy map stands"
    assert np.array_equal(run.maps[-1], run.greedy_maps[-1])
    assert run.generated_tokens >= len(prompts) * checkpoint.vocab.codes_per_image
    again = segment(0)
    assert all(np.array_equal(a, b) for a, b in zip(run.maps, again.maps, strict=True)), "reproducible by seed"
    greedy_only = segment_images(
        checkpoint, prompts, cases.images, SegmentationParams(SamplingParams.preset("segmentation"), settings.caption),
        2, 0,
    )
    assert greedy_only.captions == [None] * 4 and not any(greedy_only.resampled)
    assert all(np.array_equal(a, b) for a, b in zip(greedy_only.maps, run.greedy_maps, strict=True))


def test_the_model_describes_the_images_when_no_captions_are_given(checkpoint: ModelBundle) -> None:
    cases = build_cases(checkpoint, TaskEvalConfig(n=2, batch_size=2))
    prompts = [formatter(checkpoint).segmentation(image, None).prompt for image in cases.images]
    maps = SamplingParams.preset("segmentation").replace(temperature=1.0, num_candidates=2)
    run = segment_images(checkpoint, prompts, cases.images, SegmentationParams(maps, SamplingParams()), 2, 0)
    assert len(run.captions) == 2 and all(isinstance(c, str) for c in run.captions)
    for caption, agreed in zip(run.captions, run.agreed, strict=True):
        assert (agreed is None) == (caption_objects(caption, checkpoint.world) is None)  # type: ignore[arg-type]

