"""Comparing a parsed scene with the truth: the per-scene scores every generation metric is built from.

`score_scene` says whether a prediction is exactly right and, when it is not, what is wrong: objects are
matched by grid cell (a cell holds at most one object), so shape, colour and size are judged only where an
object was found in the right place. `aggregate_scores` averages many of them correctly (attribute accuracies
are weighted by the number of matched objects, not averaged per scene).
"""

from __future__ import annotations

from collections.abc import Sequence

from cm3leon.data.world import Scene

Score = dict[str, bool | int | float | None]
# Attributes judged per matched object: averaged over objects, not over scenes.
OBJECT_ATTRIBUTES = ("shape", "colour", "size")


def score_scene(predicted: Scene, truth: Scene) -> Score:
    """Scores of one prediction. Keys (None where they do not apply to the truth's kind of scene):

    exact: the whole scene is right (background, every object, or the word and its colour).
    background: the background is right. count: as many objects as the truth (shapes scenes).
    position: fraction of the truth's objects with a predicted object in their cell.
    spurious: predicted objects in cells that are empty in the truth. matched: objects found in their cell.
    shape / colour / size: accuracy over matched objects (None when none matched).
    word / word_colour: the word and its colour are right (text scenes).
    """
    score: Score = {
        "exact": predicted.key() == truth.key(),
        "background": predicted.background == truth.background,
        "count": None,
        "position": None,
        "spurious": None,
        "matched": None,
        **{attribute: None for attribute in OBJECT_ATTRIBUTES},
        "word": None,
        "word_colour": None,
    }
    if truth.is_text:
        score["word"] = predicted.word == truth.word
        score["word_colour"] = predicted.word_colour == truth.word_colour
        return score
    truth_cells = {o.cell for o in truth.objects}
    pairs = [(o, predicted.object_at(o.cell)) for o in truth.objects]
    matched = [(t, p) for t, p in pairs if p is not None]
    score["count"] = len(predicted.objects) == len(truth.objects)
    score["position"] = len(matched) / len(truth.objects) if truth.objects else float(not predicted.objects)
    score["spurious"] = sum(o.cell not in truth_cells for o in predicted.objects)
    score["matched"] = len(matched)
    for attribute in OBJECT_ATTRIBUTES:
        if matched:
            score[attribute] = sum(getattr(t, attribute) == getattr(p, attribute) for t, p in matched) / len(matched)
    return score


def aggregate_scores(scores: Sequence[Score]) -> dict[str, float]:
    """Mean of each score over the scenes where it applies; object attributes weighted by matched objects."""
    summary: dict[str, float] = {}
    if not scores:
        return summary
    for key in scores[0]:
        if key in OBJECT_ATTRIBUTES or key == "matched":
            continue
        values = [float(s[key]) for s in scores if s[key] is not None]  # type: ignore[arg-type]
        if values:
            summary[key] = sum(values) / len(values)
    total_matched = sum(int(s["matched"] or 0) for s in scores)
    for attribute in OBJECT_ATTRIBUTES:
        if total_matched:
            correct = sum(float(s[attribute] or 0.0) * int(s["matched"] or 0) for s in scores)
            summary[attribute] = correct / total_matched
    return summary
