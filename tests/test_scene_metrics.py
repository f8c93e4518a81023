"""Pure scene metrics (cm3leon.evaluation.scene_metrics) on hand-made predictions whose answers are known."""

from __future__ import annotations

import pytest

from cm3leon.evaluation.scene_metrics import letter_accuracy_by_slot


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
