"""Pure scene metrics (cm3leon.evaluation.scene_metrics) on hand-made predictions whose answers are known."""

from __future__ import annotations

import pytest

from cm3leon.data.tasks import EditCase
from cm3leon.data.world import Scene, SceneObject, WorldConfig
from cm3leon.evaluation.scene_metrics import letter_accuracy_by_slot, summarize_edits


def test_letter_slots_are_scored_by_place_and_a_wrong_length_scores_none_of_its_letters() -> None:
    truths = ["A", "B", "AB", "ABC", "ABC", "ABC"]
    predicted = ["A", None, "AX", "AXC", "XBC", "AB"]  # "AB" for "ABC": its letters sit in the two-letter slots
    assert letter_accuracy_by_slot(truths, predicted) == pytest.approx({
        "1 of 1": 0.5,
        "1 of 2": 1.0, "2 of 2": 0.0,
        "1 of 3": 1 / 3, "2 of 3": 1 / 3, "3 of 3": 2 / 3,
    })
    assert letter_accuracy_by_slot(["ABC"], ["ABC"]) == {"1 of 3": 1.0, "2 of 3": 1.0, "3 of 3": 1.0}
    with pytest.raises(ValueError):
        letter_accuracy_by_slot(["A", "B"], ["A"])


def test_edit_summary_separates_the_edit_itself_from_copying_the_rest() -> None:
    world = WorldConfig()
    kept = SceneObject(cell=0, shape="circle", colour="red", size="small")
    edited = SceneObject(cell=4, shape="square", colour="blue", size="large")
    recoloured = SceneObject(cell=4, shape="square", colour="green", size="large")
    source = Scene("white", (kept, edited))
    recolour = EditCase("make the blue square green", "recolour", source, source.with_objects((kept, recoloured)))
    lonely = Scene("white", (edited,))
    single = EditCase("make the blue square green", "recolour", lonely, lonely.with_objects((recoloured,)))
    predicted = [
        recolour.target,  # exact
        Scene("white", (recoloured,)),  # the edit applied, the red circle lost
        source,  # the rest kept, the edit not applied
        single.target,  # exact, a one-object source
    ]
    summary = summarize_edits([recolour, recolour, recolour, single], predicted, world)
    assert summary["exact_scene_accuracy"] == pytest.approx(0.5)
    assert summary["edit_applied"] == pytest.approx(0.75)
    assert summary["unchanged_preserved"] == pytest.approx(2 / 3)  # the red circle, judged in three cases
    assert summary["by_kind"] == {"recolour": pytest.approx(0.5)}
    assert summary["by_source_objects"] == {"1": 1.0, "2": pytest.approx(1 / 3)}
    with pytest.raises(ValueError):
        summarize_edits([recolour], [], world)
