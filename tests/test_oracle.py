"""The oracle judges every generation metric: it must be exact on clean renders, robust on degraded ones,
able to say "wrong", and its scores must add up."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cm3leon.data.oracle import Oracle, aggregate_scores, score_scene
from cm3leon.data.render import render
from cm3leon.data.world import Scene, SceneObject, Split, World, WorldConfig
from cm3leon.evaluation.oracle_eval import DegradationConfig, degrade, evaluate_oracle

CONFIG = WorldConfig.preset("shapes")


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle(CONFIG)


@pytest.fixture(scope="module")
def shape_scenes() -> list[Scene]:
    return World(CONFIG).scenes(11, Split.TEST, 300, text=False)


@pytest.fixture(scope="module")
def text_scenes() -> list[Scene]:
    return World(CONFIG).scenes(11, Split.TEST, 150, text=True)


def _exact_fraction(oracle: Oracle, scenes: list[Scene], kind: str = "clean", seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    images = [degrade(render(s, CONFIG).image, kind, DegradationConfig(), rng) for s in scenes]
    return sum(oracle.parse(image) == scene for image, scene in zip(images, scenes, strict=True)) / len(scenes)


def test_clean_renders_parse_exactly(oracle: Oracle, shape_scenes: list[Scene]) -> None:
    assert {len(s.objects) for s in shape_scenes} == set(range(1, CONFIG.max_objects + 1))
    assert {s.background for s in shape_scenes} == set(CONFIG.background_names)
    wrong = [s.key() for s in shape_scenes if oracle.parse(render(s, CONFIG).image) != s]
    assert wrong == []


@pytest.mark.parametrize("kind", ["blur", "noise"])
def test_robust_to_blur_and_noise(oracle: Oracle, shape_scenes: list[Scene], kind: str) -> None:
    assert _exact_fraction(oracle, shape_scenes[:200], kind) >= 0.97


def test_words_read_on_clean_and_blurred_text(oracle: Oracle, text_scenes: list[Scene]) -> None:
    assert {len(s.word or "") for s in text_scenes} == set(range(1, CONFIG.max_word_length + 1))
    assert _exact_fraction(oracle, text_scenes, "clean") >= 0.99
    assert _exact_fraction(oracle, text_scenes, "blur") >= 0.97
    scene = text_scenes[0]
    assert oracle.parse_word(render(scene, CONFIG).image) == (scene.word, scene.word_colour)


def test_expect_text_forces_the_kind_of_scene(oracle: Oracle, text_scenes: list[Scene]) -> None:
    image = render(text_scenes[0], CONFIG).image
    assert oracle.parse(image, expect_text=True) == text_scenes[0]
    assert oracle.parse(image, expect_text=False).word is None


def test_specks_below_the_threshold_are_ignored(oracle: Oracle) -> None:
    truth = Scene("white", (SceneObject(0, "star", "red", "small"), SceneObject(4, "circle", "blue", "large")))
    image = render(truth, CONFIG).image.copy()
    # A 3x3 speck in an empty cell, and a speck of another colour in a corner of an occupied cell.
    image[50:53, 50:53] = CONFIG.colour_rgb["green"]
    image[22:24, 22:24] = CONFIG.colour_rgb["yellow"]
    assert oracle.parse(image) == truth


def test_a_wrong_image_is_judged_not_exact(oracle: Oracle) -> None:
    truth = Scene("gray", (SceneObject(2, "triangle", "orange", "large"), SceneObject(6, "square", "cyan", "small")))
    recoloured = Scene("gray", (SceneObject(2, "triangle", "yellow", "large"), truth.objects[1]))
    score = score_scene(oracle.parse(render(recoloured, CONFIG).image), truth)
    assert score["exact"] is False
    assert (score["position"], score["shape"], score["size"], score["colour"]) == (1.0, 1.0, 1.0, 0.5)


def test_empty_background_has_no_objects(oracle: Oracle) -> None:
    for name, rgb in CONFIG.backgrounds:
        image = np.full((CONFIG.image_size, CONFIG.image_size, 3), rgb, dtype=np.uint8)
        assert oracle.parse(image) == Scene(name)
        assert oracle.parse_word(image) is None


def test_other_sizes_and_float_images_are_accepted(oracle: Oracle, shape_scenes: list[Scene]) -> None:
    scene = shape_scenes[0]
    picture = render(scene, CONFIG).pil()
    assert oracle.parse(picture.resize((4 * CONFIG.image_size,) * 2, Image.Resampling.NEAREST)) == scene
    assert oracle.parse(np.asarray(picture) / 255.0) == scene


def test_score_scene_counts_matches_by_cell() -> None:
    truth = Scene("black", (SceneObject(0, "circle", "red", "small"), SceneObject(8, "star", "pink", "large")))
    predicted = Scene("black", (SceneObject(0, "square", "red", "small"), SceneObject(5, "star", "pink", "large")))
    score = score_scene(predicted, truth)
    assert score["exact"] is False and score["count"] is True and score["background"] is True
    assert (score["position"], score["spurious"], score["matched"]) == (0.5, 1, 1)
    assert (score["shape"], score["colour"], score["size"]) == (0.0, 1.0, 1.0)
    assert score_scene(truth, truth)["exact"] is True
    word = Scene("white", word="CAT", word_colour="blue")
    assert score_scene(Scene("white", word="CAT", word_colour="red"), word)["word"] is True
    assert score_scene(Scene("white", word="CAT", word_colour="red"), word)["word_colour"] is False


def test_aggregate_weights_attributes_by_matched_objects() -> None:
    truth = Scene("white", (SceneObject(0, "circle", "red", "small"), SceneObject(1, "star", "red", "small")))
    half_wrong = Scene("white", (SceneObject(0, "circle", "red", "small"), SceneObject(1, "star", "blue", "small")))
    one = Scene("white", (SceneObject(0, "circle", "red", "small"),))
    summary = aggregate_scores([score_scene(half_wrong, truth), score_scene(one, one)])
    # Three matched objects, one with the wrong colour: 2/3, not the per-scene mean 0.75.
    assert summary["colour"] == pytest.approx(2 / 3)
    assert summary["exact"] == 0.5 and summary["shape"] == 1.0


def test_evaluate_oracle_reports_every_degradation(oracle: Oracle) -> None:
    metrics = evaluate_oracle(n=12, seed=3, config=CONFIG, n_text=6, oracle=oracle)
    exact = metrics["exact_scene_accuracy"]
    assert isinstance(exact, dict) and set(exact) == {"clean", "blur", "noise", "jpeg", "resample"}
    assert exact["clean"] == 1.0 and min(exact.values()) >= 0.9
    assert metrics["word_accuracy"]["clean"] == 1.0  # type: ignore[index]
