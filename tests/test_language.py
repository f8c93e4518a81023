"""Captions, the caption parser, questions and reasoning: exact, and consistent with the rendered pixels."""

from __future__ import annotations

import random
import re
from collections import Counter
from itertools import islice

import numpy as np
import pytest
from scipy import ndimage

from cm3leon.data.language import (
    QA,
    detailed_caption,
    detailed_caption_variants,
    final_answer,
    parse_caption,
    qa_pairs,
    reasoning_pairs,
    short_caption,
    short_caption_variants,
    text_render_prompt,
)
from cm3leon.data.questions import QA_KINDS, REASONING_KIND, worked_answer
from cm3leon.data.render import render, segmentation_classes
from cm3leon.data.text_corpus import world_text_corpus
from cm3leon.data.world import Scene, SceneObject, Split, World, WorldConfig

CONFIG = WorldConfig.preset("tiny")
WORLD = World(CONFIG)
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _scenes(n: int, seed: int, text_fraction: float = 0.0, split: Split = Split.TRAIN) -> list[Scene]:
    rng = random.Random(seed)
    return [WORLD.sample(rng, split, text=rng.random() < text_fraction) for _ in range(n)]


def test_every_paraphrase_parses_back_to_its_scene() -> None:
    scenes = _scenes(2000, seed=1, text_fraction=0.15)
    for scene in scenes:
        variants = detailed_caption_variants(scene, CONFIG)
        assert len(set(variants)) == len(variants) >= 3
        for caption in variants:
            assert parse_caption(caption, CONFIG) == scene, caption
    # Every split, including held-out pairs, round-trips too.
    for scene in _scenes(200, seed=2, split=Split.TEST_COMPOSITIONAL):
        assert parse_caption(detailed_caption(scene, CONFIG), CONFIG) == scene


def test_parser_ignores_extra_words_and_rejects_incomplete_text() -> None:
    scene = Scene(
        "black",
        (
            SceneObject(cell=1, shape="circle", colour="red", size="large"),
            SceneObject(cell=4, shape="star", colour="blue", size="small"),
        ),
    )
    caption = detailed_caption(scene, CONFIG)
    assert caption == "a large red circle at the top center and a small blue star at the center on a black background"
    assert parse_caption(f"Here is a lovely picture: {caption}. Nice!", CONFIG) == scene
    assert parse_caption(short_caption(scene, CONFIG), CONFIG) is None  # no sizes, positions or background
    assert parse_caption("a large red circle at the top center", CONFIG) is None  # no background
    assert parse_caption("a large red circle on a white background", CONFIG) is None  # no position
    two_in_one_cell = "a large red circle at the center and a small red star at the center on a white background"
    assert parse_caption(two_in_one_cell, CONFIG) is None
    assert parse_caption("", CONFIG) is None


def test_detailed_caption_names_every_attribute_and_short_caption_only_colours_and_shapes() -> None:
    for scene in _scenes(300, seed=3):
        caption = detailed_caption(scene, CONFIG)
        assert f"{scene.background} background" in caption
        for obj in scene.objects:
            assert f"{obj.size} {obj.colour} {obj.shape} at the {CONFIG.position_name(obj.cell)}" in caption
        # Objects appear in reading order.
        starts = [
            caption.index(f"{o.size} {o.colour} {o.shape} at the {CONFIG.position_name(o.cell)}") for o in scene.objects
        ]
        assert starts == sorted(starts)
        for short in short_caption_variants(scene, CONFIG):
            words = set(re.findall(r"[a-z]+", short))
            assert not words & set(CONFIG.size_names)
            assert not words & set(CONFIG.background_names)
            assert not any(p in short for p in CONFIG.position_names)
            assert all(o.colour in words and o.shape in short for o in scene.objects)


def test_paraphrase_choice_follows_the_rng() -> None:
    scene = _scenes(1, seed=4)[0]
    assert detailed_caption(scene, CONFIG) == detailed_caption_variants(scene, CONFIG)[0]
    chosen = {detailed_caption(scene, CONFIG, random.Random(i)) for i in range(60)}
    assert chosen == set(detailed_caption_variants(scene, CONFIG))
    assert detailed_caption(scene, CONFIG, random.Random(5)) == detailed_caption(scene, CONFIG, random.Random(5))


def test_text_scene_caption_and_render_prompt() -> None:
    scene = Scene("white", word="AB", word_colour="red")
    assert detailed_caption(scene, CONFIG) == 'the word "AB" in red on a white background'
    assert text_render_prompt(scene, CONFIG) == 'draw "AB" in red on a white background'
    assert short_caption(scene, CONFIG) == 'the word "AB" in red'
    assert parse_caption(text_render_prompt(scene, CONFIG), CONFIG) == scene
    # A word that spells a colour is still the word, not the colour.
    tricky = Scene("gray", word="RED", word_colour="blue")
    assert parse_caption(detailed_caption(tricky, CONFIG), CONFIG) == tricky
    with pytest.raises(ValueError):
        text_render_prompt(_scenes(1, seed=5)[0], CONFIG)


def test_language_uses_the_config_vocabulary() -> None:
    """A world with other names, shapes and a 4x4 grid: nothing in the language is hard-coded."""
    config = WorldConfig(
        grid=4,
        shapes=("circle", "square", "star"),
        colours=(("teal", (0, 128, 128)), ("maroon", (128, 0, 0)), ("olive", (128, 128, 0))),
        backgrounds=(("ivory", (255, 255, 240)), ("navy", (0, 0, 80))),
        sizes=(("tiny", 0.4), ("medium", 0.65), ("huge", 0.9)),
        max_objects=4,
        held_out_pairs=(("teal", "star"),),
    )
    world = World(config)
    rng = random.Random(6)
    position_answers = set()
    for _ in range(300):
        scene = world.sample(rng, Split.TRAIN)
        for caption in detailed_caption_variants(scene, config):
            assert parse_caption(caption, config) == scene, caption
        position_answers |= {qa.answer for qa in qa_pairs(scene, config, rng) if qa.kind == "position_of"}
    assert position_answers <= set(config.position_names)
    assert len(position_answers) == config.num_cells  # "row 1 column 1" ... "row 4 column 4"


def _components(scene: Scene) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    rendered = render(scene, CONFIG)
    labels, count = ndimage.label(rendered.segmentation != 0, structure=EIGHT_CONNECTED)
    return labels, count, rendered.segmentation, rendered.image


def _cell_of_pixels(ys: np.ndarray, xs: np.ndarray) -> int:
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    return int(cy // CONFIG.cell_size) * CONFIG.grid + int(cx // CONFIG.cell_size)


def test_question_answers_match_the_rendered_image() -> None:
    classes = segmentation_classes(CONFIG)
    rng = random.Random(7)
    kinds: Counter[str] = Counter()
    exists_answers: Counter[str] = Counter()
    for scene in _scenes(300, seed=8):
        labels, count, segmentation, image = _components(scene)
        # Each component: its shape (segmentation class), colour (pixel colour) and cell (centroid).
        parts = []
        for k in range(1, count + 1):
            ys, xs = np.nonzero(labels == k)
            shape = classes[int(segmentation[ys[0], xs[0]])]
            colour = next(n for n, rgb in CONFIG.colours if tuple(image[ys[0], xs[0]]) == rgb)
            parts.append((shape, colour, _cell_of_pixels(ys, xs)))
        for qa in qa_pairs(scene, CONFIG, rng):
            kinds[qa.kind] += 1
            subject = re.search(r"the (\w+) (\w+)\?$", qa.question)
            if qa.kind == "count":
                assert qa.answer == str(count)
            elif qa.kind == "count_shape":
                shape = next(s for s in CONFIG.shapes if f"many {s}" in qa.question)
                assert qa.answer == str(sum(p[0] == shape for p in parts))
            elif qa.kind == "colour_of":
                shape = re.search(r"the (\w+)\?$", qa.question).group(1)
                assert [p[1] for p in parts if p[0] == shape] == [qa.answer]
            elif qa.kind == "position_of":
                colour, shape = subject.groups()
                assert [CONFIG.position_name(p[2]) for p in parts if p[:2] == (shape, colour)] == [qa.answer]
            elif qa.kind == "exists":
                colour, shape = re.search(r"an? (\w+) (\w+)\?$", qa.question).groups()
                exists_answers[qa.answer] += 1
                assert qa.answer == ("yes" if any(p[:2] == (shape, colour) for p in parts) else "no")
            elif qa.kind == "left_of":
                colour, shape = subject.groups()
                (ref_cell,) = [p[2] for p in parts if p[:2] == (shape, colour)]
                left = [p for p in parts if p[2] % CONFIG.grid < ref_cell % CONFIG.grid]
                assert [p[0] for p in left] == [qa.answer]
            elif qa.kind == "background":
                # Objects never cover half the image, so the background is the majority colour.
                assert np.all(image == CONFIG.background_rgb[qa.answer], axis=-1).mean() > 0.5
            else:
                raise AssertionError(f"unexpected kind {qa.kind}")
    assert set(kinds) == set(QA_KINDS) - {"word", "word_colour"}
    assert exists_answers["yes"] == exists_answers["no"] > 0
    assert kinds["left_of"] > 20


def test_text_scene_questions() -> None:
    pairs = qa_pairs(Scene("black", word="HI", word_colour="pink"), CONFIG, random.Random(0))
    assert {(qa.kind, qa.answer) for qa in pairs} == {("word", "HI"), ("word_colour", "pink"), ("background", "black")}
    assert reasoning_pairs(Scene("black", word="HI", word_colour="pink"), CONFIG, random.Random(0)) == []


def _symbolic_reasoning_answer(question: str, scene: Scene) -> int:
    shapes = Counter(o.shape for o in scene.objects)
    by_plural = {f"{s}s": s for s in CONFIG.shapes}
    if match := re.fullmatch(r"how many more (\w+) than (\w+) are there\?", question):
        return shapes[by_plural[match.group(1)]] - shapes[by_plural[match.group(2)]]
    if match := re.fullmatch(r"how many objects are not (\w+)\?", question):
        return sum(o.colour != match.group(1) for o in scene.objects)
    if match := re.fullmatch(r"how many (\w+) and (\w+) are there in total\?", question):
        return shapes[by_plural[match.group(1)]] + shapes[by_plural[match.group(2)]]
    raise AssertionError(f"unknown reasoning question {question!r}")


def test_reasoning_answers_are_correct_and_extractable() -> None:
    rng = random.Random(9)
    seen_forms = set()
    for scene in _scenes(500, seed=10):
        pairs = reasoning_pairs(scene, CONFIG, rng)
        assert len(pairs) == 3 and all(qa.kind == REASONING_KIND for qa in pairs)
        for qa in pairs:
            expected = _symbolic_reasoning_answer(qa.question, scene)
            assert expected >= 0
            assert qa.answer.endswith(f"so the answer is {expected}")
            assert final_answer(qa.answer) == str(expected)
            seen_forms.add(qa.question.split()[2])
    assert seen_forms == {"more", "objects"} | {f"{s}s" for s in CONFIG.shapes}
    worked = reasoning_pairs(
        Scene(
            "white",
            (
                SceneObject(0, "circle", "red", "small"),
                SceneObject(1, "circle", "blue", "large"),
                SceneObject(2, "square", "red", "small"),
            ),
        ),
        CONFIG,
        random.Random(0),
    )
    assert all(isinstance(qa, QA) for qa in worked)
    assert final_answer("there are 2 circles and 1 square, so the answer is 1.") == "1"
    assert final_answer("so the answer is 3 ... so the answer is 4") == "4"
    assert final_answer("I think it is 3") is None


def test_worked_answers_describe_the_image_then_give_the_exact_answer() -> None:
    rng = random.Random(11)
    answers = []
    for scene in _scenes(400, seed=12, text_fraction=0.15):
        description = detailed_caption(scene, CONFIG)
        for qa in qa_pairs(scene, CONFIG, rng):
            worked = worked_answer(qa, description)
            assert (worked.question, worked.kind) == (qa.question, qa.kind)
            assert worked.answer == f"{description}, so the answer is {qa.answer}"
            assert final_answer(worked.answer) == qa.answer
            answers.append(qa.answer)
    # Several-word positions and upper-case rendered words come back whole, as exact match needs them.
    assert any(" " in answer for answer in answers) and any(answer.isupper() for answer in answers)
    assert final_answer("a red circle at the top left, so the answer is top left.") == "top left"
    with pytest.raises(ValueError, match="already worked"):
        worked_answer(reasoning_pairs(_scenes(1, seed=13)[0], CONFIG, rng)[0], "a red circle")


def test_world_text_corpus_covers_every_kind_of_text_and_is_deterministic() -> None:
    corpus = list(world_text_corpus(CONFIG, n_scenes=150, seed=0))
    assert corpus == list(world_text_corpus(CONFIG, n_scenes=150, seed=0))
    assert list(islice(world_text_corpus(CONFIG, n_scenes=150, seed=1), 400)) != corpus[:400]
    text = "\n".join(corpus)
    words = set(re.findall(r"[A-Za-z]+", text))
    for name in [*CONFIG.colour_names, *CONFIG.shapes, *CONFIG.size_names, *CONFIG.background_names]:
        assert name in words
    for marker in (
        'draw "',
        'the word "',
        "how many",
        "so the answer is",
        "is there",
        "what shape is left of",
        "make the",
        "move the",
        "remove the",
        "add a",
        "the background is",
        "at the top left",
    ):
        assert marker in text, marker
