"""Held-out cases of every instruction task, a fixed function of (world, split, n, seed), and their input codes.

Never the train split. Reported numbers come from test (and test_compositional); `val` is for choosing between
checkpoints or decodings, and a validation run skips the compositional split, which is test data. Shapes scenes
come from `eval_scenes` (object counts cycle 1..max, as the t2i and caption evaluations use); edits and word
scenes are drawn from their own seeded streams of the same split.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import detailed_caption
from cm3leon.data.tasks import EditCase, make_edit
from cm3leon.data.world import Scene, Split, World
from cm3leon.evaluation.decoder_setup import eval_scenes
from cm3leon.evaluation.t2i_eval import POOLED_CANDIDATES, check_pooled_candidates
from cm3leon.presets import Presets
from cm3leon.tasks.formats import TASKS, TaskFormatter
from cm3leon.tokenizers.vocab import ImageCodes
from cm3leon.training.task_corpus import encode_pictures

T2I_METHODS_ALL: tuple[str, ...] = ("plain", "cfg", "cdk", "pooled")
# One evaluation per instruction-tuning format, in the kind table's order (the formats name the report's sections).
EVAL_TASKS: tuple[str, ...] = TASKS


@dataclass(frozen=True)
class TaskEvalConfig(Presets):
    """Size of `cm3leon eval all`. Presets: `standard` (reported numbers, n = 200 each), `quick` (tests)."""

    n: int = 200
    batch_size: int = 16
    seed: int = 0
    split: str = Split.TEST.value
    t2i_methods: tuple[str, ...] = T2I_METHODS_ALL
    compositional: bool = True
    grid_rows: int = 8  # examples shown in each task's grid PNG
    pooled_candidates: int = POOLED_CANDIDATES  # text->image pooled decoding
    tasks: tuple[str, ...] = EVAL_TASKS  # a subset runs only those sections (the summary's others stay None)
    # VQA and reasoning questions (default n): checkpoints often differ there by less than n = 200's noise.
    question_n: int | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"standard": {}, "quick": dict(n=3, batch_size=4, grid_rows=3)}

    def __post_init__(self) -> None:
        check_pooled_candidates(self.pooled_candidates)
        if Split(self.split) is Split.TRAIN:
            raise ValueError("the evaluation runs on held-out splits (test, test_compositional, val); got train")
        if Split(self.split) is Split.VAL and self.compositional:
            raise ValueError("a validation run must set compositional=False: the compositional split is test data")
        unknown = set(self.tasks) - set(EVAL_TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {list(EVAL_TASKS)}, got {list(self.tasks)}")
        if self.n < 1 or self.batch_size < 1 or (self.question_n is not None and self.question_n < 1):
            raise ValueError("n, question_n and batch_size must be >= 1")

    @property
    def questions(self) -> int:
        return self.question_n or self.n


@dataclass
class TaskCases:
    """The evaluation's inputs: shapes scenes (with image and segmentation codes), edits, word scenes."""

    scenes: list[Scene]
    images: list[ImageCodes]
    segmentations: list[ImageCodes]
    captions: list[str]  # a seeded detailed caption per scene (infill and structure-guided prompts)
    edits: list[EditCase]
    edit_sources: list[ImageCodes]
    words: list[Scene]
    word_images: list[ImageCodes]  # codes of each word scene's render (for the VQ's own ceiling)


def _as_codes(grids: np.ndarray) -> list[ImageCodes]:
    return [ImageCodes.of(grid.reshape(-1).tolist()) for grid in grids]


def build_cases(checkpoint: ModelBundle, config: TaskEvalConfig, split: Split | None = None) -> TaskCases:
    """The evaluation's inputs on `config.split`; `split` overrides it (the decoding sweep's validation cases)."""
    world, split = checkpoint.world, split or Split(config.split)
    scenes = eval_scenes(world, split, config.n, config.seed)
    sampler = World(world)
    edit_rng = random.Random(f"{config.seed}:{split.value}:edit-eval")
    edits = [make_edit(sampler, edit_rng, split) for _ in range(config.n)]
    # Word scenes have no held-out pairs, so the compositional split has none: fall back to the test split.
    word_split = Split.TEST if split is Split.TEST_COMPOSITIONAL else split
    word_rng = random.Random(f"{config.seed}:{word_split.value}:text-eval")
    words = [sampler.sample(word_rng, word_split, text=True) for _ in range(config.n)]
    pictures = [(s, False) for s in scenes] + [(s, True) for s in scenes] + [(e.source, False) for e in edits]
    pictures += [(s, False) for s in words]
    codes = _as_codes(
        encode_pictures(pictures, world, checkpoint.image_tokenizer, config.batch_size, progress=False)
    )
    n, e = len(scenes), len(edits)
    caption_rng = random.Random(f"{config.seed}:task-captions")
    return TaskCases(
        scenes=scenes,
        images=codes[:n],
        segmentations=codes[n : 2 * n],
        captions=[detailed_caption(s, world, caption_rng) for s in scenes],
        edits=edits,
        edit_sources=codes[2 * n : 2 * n + e],
        words=words,
        word_images=codes[2 * n + e :],
    )


def formatter(checkpoint: ModelBundle) -> TaskFormatter:
    return TaskFormatter(checkpoint.vocab, checkpoint.world)


def mean(values: Sequence[float | bool]) -> float | None:
    return float(np.mean(values)) if len(values) else None
