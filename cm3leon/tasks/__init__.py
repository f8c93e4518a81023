"""Instruction-tuning tasks: formats (prompt + output ids), the pre-encoded task corpus, output parsers, a
checkpoint with the world it was trained on (`checkpoint`) and the task decoding loops (`decode`) that the
evaluations and the serving handlers share."""

from cm3leon.tasks.formats import IMAGE_TASKS, TASKS, TEXT_TASKS, TaskExample, TaskFormatter

__all__ = ["IMAGE_TASKS", "TASKS", "TEXT_TASKS", "TaskExample", "TaskFormatter"]
