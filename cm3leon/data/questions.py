"""Visual questions and two-step reasoning about a `Scene`, with exact short answers.

Questions are only asked when their answer is unambiguous (e.g. "what color is the circle?" only when there is
one circle), so an answer can be scored by exact string match. Re-exported by `cm3leon.data.language`.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from cm3leon.data.world import Scene, SceneObject, WorldConfig

QA_KINDS: tuple[str, ...] = (
    "count",
    "count_shape",
    "colour_of",
    "position_of",
    "exists",
    "left_of",
    "background",
    # Text-rendering scenes have no shapes; they get these instead.
    "word",
    "word_colour",
)
REASONING_KIND = "reasoning"
FINAL_ANSWER_PREFIX = "so the answer is"
YES, NO = "yes", "no"


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str


def article(phrase: str) -> str:
    """ "a" or "an" for a phrase, by its first letter (good enough for the world's vocabulary)."""
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def plural(noun: str) -> str:
    """English plural of a shape name (circles, boxes, ...), by rule so no shape list is needed here."""
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def count_phrase(n: int, noun: str) -> str:
    return f"{n} {noun if n == 1 else plural(noun)}"


def _column(obj: SceneObject, config: WorldConfig) -> int:
    return obj.cell % config.grid


def _uniquely_named(scene: Scene) -> list[SceneObject]:
    """Objects that "the <colour> <shape>" refers to without ambiguity."""
    pairs = Counter((o.colour, o.shape) for o in scene.objects)
    return [o for o in scene.objects if pairs[(o.colour, o.shape)] == 1]


def _text_scene_qa(scene: Scene) -> list[QA]:
    assert scene.word is not None and scene.word_colour is not None
    return [
        QA("what word is written?", scene.word, "word"),
        QA("what color is the word?", scene.word_colour, "word_colour"),
        QA("what color is the background?", scene.background, "background"),
    ]


def qa_pairs(scene: Scene, config: WorldConfig, rng: random.Random) -> list[QA]:
    """One question of every kind that has an unambiguous answer in `scene` (rng picks the subject).

    `exists` comes as a pair, one "yes" and one "no", so the kind is balanced by construction.
    """
    if scene.is_text:
        return _text_scene_qa(scene)
    shape_counts = Counter(o.shape for o in scene.objects)
    present_shapes = sorted(shape_counts)
    # Half the shape counts ask about a present shape, half about any shape (often absent: answer "0").
    asked_shape = rng.choice(present_shapes if rng.random() < 0.5 else list(config.shapes))
    pairs: list[QA] = [
        QA("how many objects are there?", str(len(scene.objects)), "count"),
        QA(f"how many {plural(asked_shape)} are there?", str(shape_counts[asked_shape]), "count_shape"),
    ]

    unique_shapes = [s for s in present_shapes if shape_counts[s] == 1]
    if unique_shapes:
        shape = rng.choice(unique_shapes)
        colour = next(o.colour for o in scene.objects if o.shape == shape)
        pairs.append(QA(f"what color is the {shape}?", colour, "colour_of"))

    named = _uniquely_named(scene)
    if named:
        obj = rng.choice(named)
        pairs.append(QA(f"where is the {obj.colour} {obj.shape}?", config.position_name(obj.cell), "position_of"))

    present = {(o.colour, o.shape) for o in scene.objects}
    absent = [(c, s) for c in config.colour_names for s in config.shapes if (c, s) not in present]
    yes_colour, yes_shape = rng.choice(sorted(present))
    no_colour, no_shape = rng.choice(absent)
    exists = [
        QA(f"is there {article(yes_colour)} {yes_colour} {yes_shape}?", YES, "exists"),
        QA(f"is there {article(no_colour)} {no_colour} {no_shape}?", NO, "exists"),
    ]
    rng.shuffle(exists)
    pairs.extend(exists)

    left_of_candidates = []
    for obj in named:
        left = [o for o in scene.objects if _column(o, config) < _column(obj, config)]
        if len(left) == 1:
            left_of_candidates.append((obj, left[0]))
    if left_of_candidates:
        obj, left = rng.choice(left_of_candidates)
        pairs.append(QA(f"what shape is left of the {obj.colour} {obj.shape}?", left.shape, "left_of"))

    pairs.append(QA("what color is the background?", scene.background, "background"))
    return pairs


def _worked(counts: list[str], first: int, result: int) -> str:
    verb = "is" if first == 1 else "are"
    return f"there {verb} {' and '.join(counts)}, {FINAL_ANSWER_PREFIX} {result}"


def reasoning_pairs(scene: Scene, config: WorldConfig, rng: random.Random) -> list[QA]:
    """Two-step counting questions with a short worked answer ending in "so the answer is N".

    Three forms: a difference of two shape counts, objects not of a colour, and a sum of two shape counts.
    """
    if scene.is_text:
        return []
    shape_counts = Counter(o.shape for o in scene.objects)
    colour_counts = Counter(o.colour for o in scene.objects)
    total = len(scene.objects)

    more = rng.choice(sorted(shape_counts))
    fewer = rng.choice([s for s in config.shapes if s != more and shape_counts[s] <= shape_counts[more]])
    n_more, n_fewer = shape_counts[more], shape_counts[fewer]
    difference = QA(
        f"how many more {plural(more)} than {plural(fewer)} are there?",
        _worked([count_phrase(n_more, more), count_phrase(n_fewer, fewer)], n_more, n_more - n_fewer),
        REASONING_KIND,
    )

    colour = rng.choice(sorted(colour_counts))
    n_colour = colour_counts[colour]
    colour_verb = "is" if n_colour == 1 else "are"
    complement = QA(
        f"how many objects are not {colour}?",
        f"there {'is' if total == 1 else 'are'} {count_phrase(total, 'object')} and {n_colour} {colour_verb} "
        f"{colour}, {FINAL_ANSWER_PREFIX} {total - n_colour}",
        REASONING_KIND,
    )

    # The first shape is present, so the sum is rarely the uninformative "0 and 0".
    first = rng.choice(sorted(shape_counts))
    second = rng.choice([s for s in config.shapes if s != first])
    n_first, n_second = shape_counts[first], shape_counts[second]
    total_of_two = QA(
        f"how many {plural(first)} and {plural(second)} are there in total?",
        _worked([count_phrase(n_first, first), count_phrase(n_second, second)], n_first, n_first + n_second),
        REASONING_KIND,
    )
    return [difference, complement, total_of_two]


def final_answer(text: str) -> str | None:
    """What follows the last "so the answer is" of a worked answer (a count, a word, "top left"), with a closing
    full stop dropped and its case kept (rendered words are upper case); None if there is no such phrase."""
    start = text.lower().rfind(FINAL_ANSWER_PREFIX)
    if start < 0:
        return None
    answer = text[start + len(FINAL_ANSWER_PREFIX) :].strip().removesuffix(".").strip()
    return answer or None


def worked_answer(qa: QA, description: str) -> QA:
    """`qa` answered by first describing the image, then "so the answer is X": "a red circle at the top left and
    a blue star at the center on a white background, so the answer is blue".

    Why: a model that names every object's colour, shape and position right in its captions may still answer
    binding questions ("what color is the star?") poorly; written out first, the description turns the question
    into reading its own text back, where attention copies exactly.
    """
    if qa.kind == REASONING_KIND:
        raise ValueError("reasoning answers are already worked")
    return QA(qa.question, f"{description}, {FINAL_ANSWER_PREFIX} {qa.answer}", qa.kind)
