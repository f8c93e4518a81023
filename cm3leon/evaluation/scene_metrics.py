"""Scene-level metrics shared by the text->image and captioning evaluations.

Both evaluations end the same way: a predicted Scene per ground-truth Scene (the oracle's parse of a generated
image, or `parse_caption` of a generated caption), summarised into exact-scene accuracy, split by object count,
and attribute accuracies. These are pure functions of (truths, predictions), so tests can feed them perfect and
wrong predictions and check that the metric can reach 1 and 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from cm3leon.data.language import detailed_caption
from cm3leon.data.scene_score import aggregate_scores, score_scene
from cm3leon.data.tasks import EditCase, edit_touched_cells
from cm3leon.data.world import Scene, WorldConfig

# The attribute accuracies averaged into `attribute_accuracy` (names as in `score_scene`).
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size", "position", "background")
# Stands for a prediction that could not be read at all (an unparseable caption): matches nothing.
UNREADABLE = Scene(background="")


def _mean(values: Sequence[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_predictions(truths: Sequence[Scene], predicted: Sequence[Scene]) -> dict[str, object]:
    """exact_scene_accuracy, single_object_exact, multi_object_exact (None when the set has no such scene),
    attribute_accuracy (mean of shape/colour/size/position/background accuracies; an attribute never judged,
    e.g. shape when no object was found in its cell, counts as 0) and the per-attribute accuracies."""
    if len(truths) != len(predicted):
        raise ValueError(f"{len(truths)} truths but {len(predicted)} predictions")
    if not truths:
        raise ValueError("nothing to score")
    scores = [score_scene(p, t) for p, t in zip(predicted, truths, strict=True)]
    summary = aggregate_scores(scores)
    exact = [bool(score["exact"]) for score in scores]
    attributes = {name: summary.get(name, 0.0) for name in ATTRIBUTES}
    return {
        "n": len(truths),
        "exact_scene_accuracy": _mean(exact),
        "single_object_exact": _mean([e for e, t in zip(exact, truths, strict=True) if len(t.objects) == 1]),
        "multi_object_exact": _mean([e for e, t in zip(exact, truths, strict=True) if len(t.objects) > 1]),
        "attribute_accuracy": sum(attributes.values()) / len(attributes),
        "attributes": {**attributes, "count": summary.get("count", 0.0)},
    }


def describe_scene(scene: Scene, world: WorldConfig) -> str:
    """A scene in words, for grid labels (also empty and unreadable scenes)."""
    if scene is UNREADABLE or scene == UNREADABLE:
        return "nothing readable"
    if not scene.objects and not scene.is_text:
        return f"no objects on a {scene.background} background"
    return detailed_caption(scene, world)


def verdict_label(predicted: Scene, truth: Scene, world: WorldConfig) -> str:
    """The oracle's verdict on one generation, as a grid label."""
    if predicted.key() == truth.key():
        return "verdict: exact"
    return f"verdict: WRONG, reads as {describe_scene(predicted, world)}"


def letter_accuracy_by_slot(truths: Sequence[str], predicted: Sequence[str | None]) -> dict[str, float]:
    """How often each letter slot was drawn right, keyed "<position> of <length>" (1-based), e.g. "2 of 3".

    Words of each length are laid out in fixed slots (`render.word_layout`), so a slot is a place in the image:
    this separates letters that are hard from places that are hard (the middle slot, shared by single letters and
    the middle of three-letter words, is centred on a boundary between code columns). A letter counts as right
    only when the word read back has the true length, since otherwise its letters sit in other slots.
    """
    hits: dict[tuple[int, int], list[bool]] = {}
    for truth, word in zip(truths, predicted, strict=True):
        for position, letter in enumerate(truth):
            same_layout = word is not None and len(word) == len(truth)
            hits.setdefault((len(truth), position), []).append(same_layout and word[position] == letter)
    return {f"{position + 1} of {length}": sum(v) / len(v) for (length, position), v in sorted(hits.items())}


def summarize_edits(edits: Sequence[EditCase], predicted: Sequence[Scene], world: WorldConfig) -> dict[str, object]:
    """Edit metrics that say *which half* of an edit failed: `edit_applied` (every cell the edit touches holds the
    target's content, whatever happened elsewhere) and `unchanged_preserved` (the untouched source objects that
    reappear, pooled over objects), beside `exact_scene_accuracy` split by kind and by the source's object count
    (a scene with more objects has more to copy, so splits with different object mixes are not comparable)."""
    if len(edits) != len(predicted):
        raise ValueError(f"{len(edits)} edits but {len(predicted)} predictions")
    exact, applied, preserved = [], [], []
    by_kind: dict[str, list[bool]] = {}
    by_objects: dict[int, list[bool]] = {}
    for edit, scene in zip(edits, predicted, strict=True):
        source, target = edit.source, edit.target
        hit = scene.key() == target.key()
        exact.append(hit)
        by_kind.setdefault(edit.kind, []).append(hit)
        by_objects.setdefault(len(source.objects), []).append(hit)
        touched = edit_touched_cells(source, target, world)
        applied.append(all(scene.object_at(c) == target.object_at(c) for c in touched))
        preserved.extend(o in scene.objects for o in source.objects if o.cell not in touched)
    return {
        "n": len(exact),
        "exact_scene_accuracy": _mean(exact),
        "edit_applied": _mean(applied),
        "unchanged_preserved": _mean(preserved),
        "by_kind": {kind: _mean(hits) for kind, hits in sorted(by_kind.items())},
        "by_source_objects": {str(count): _mean(hits) for count, hits in sorted(by_objects.items())},
    }
