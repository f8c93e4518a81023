"""Instruction-tuning tasks: formats (prompt + output ids), output parsers, infill spans and the task decoding
loops (`decode`) that the evaluations, the serving handlers and the policies share."""

from cm3leon.tasks.formats import IMAGE_TASKS, TASKS, TEXT_TASKS, TaskExample, TaskFormatter

__all__ = ["IMAGE_TASKS", "TASKS", "TEXT_TASKS", "TaskExample", "TaskFormatter"]
