"""Instruction-tuning tasks: formats (prompt + output ids), the pre-encoded task corpus, and output parsers."""

from cm3leon.tasks.formats import IMAGE_TASKS, TASKS, TEXT_TASKS, TaskExample, TaskFormatter

__all__ = ["IMAGE_TASKS", "TASKS", "TEXT_TASKS", "TaskExample", "TaskFormatter"]
