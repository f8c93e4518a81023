"""`cm3leon eval all`: every instruction task of the shipped model on held-out cases, one JSON and a grid per task.

The JSON has a section per task plus `summary`, a flat object with exactly `SUMMARY_KEYS` (numbers in 0..1
except `t2i_fd`; None where a number could not be measured, e.g. `t2i_fd` without a retriever of the world's
image size, `t2i_pooled_rerank_exact` when pooled decoding was not run). Sections reuse the t2i and caption
evaluators; the other tasks live in `image_tasks_eval` and `text_tasks_eval`. Grids are written as
`<stem>_<task>.png` beside the JSON.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from cm3leon.bundle import ModelBundle
from cm3leon.data.grid import Tile, save_grid
from cm3leon.data.oracle import Oracle
from cm3leon.evaluation.caption_eval import CaptionEvalConfig, evaluate_captioning
from cm3leon.evaluation.image_tasks_eval import (
    TaskResult,
    evaluate_edits,
    evaluate_grounded,
    evaluate_infill,
    evaluate_seg2img,
    evaluate_segmentation,
    evaluate_text_render,
)
from cm3leon.evaluation.t2i_eval import retriever_reranker
from cm3leon.evaluation.t2i_task_eval import RetrievalPrefix, evaluate_t2i_methods, load_fd_retriever
from cm3leon.evaluation.task_cases import TaskCases, TaskEvalConfig, build_cases, mean
from cm3leon.evaluation.text_tasks_eval import evaluate_questions
from cm3leon.tasks.decode import decode_codes

SUMMARY_KEYS: tuple[str, ...] = (
    "t2i_exact", "t2i_cfg_exact", "t2i_pooled_rerank_exact", "caption_exact", "vqa_accuracy", "edit_exact",
    "infill_exact", "segmentation_miou", "seg2img_exact", "grounded_exact", "text_render_exact",
    "reasoning_accuracy", "t2i_fd",
)
CAPTION_GRID_COLUMNS = 4


def _get(section: object, *path: str) -> object:
    for key in path:
        if not isinstance(section, dict) or key not in section:
            return None
        section = section[key]
    return section


def summarize(report: dict[str, object], split: str) -> dict[str, object]:
    """The flat summary (exactly SUMMARY_KEYS) from the task sections."""
    t2i = report.get("t2i")
    best = _get(t2i, "best_method")
    return {
        "t2i_exact": _get(t2i, split, str(best), "exact_scene_accuracy"),
        "t2i_cfg_exact": _get(t2i, split, "cfg", "exact_scene_accuracy"),
        "t2i_pooled_rerank_exact": _get(t2i, split, "pooled", "exact_scene_accuracy"),
        "caption_exact": _get(report, "caption", "exact_scene_accuracy"),
        "vqa_accuracy": _get(report, "vqa", "accuracy"),
        "edit_exact": _get(report, "edit", "exact_scene_accuracy"),
        "infill_exact": _get(report, "infill", "exact_scene_accuracy"),
        "segmentation_miou": _get(report, "segmentation", "miou"),
        "seg2img_exact": _get(report, "seg2img", "exact_scene_accuracy"),
        "grounded_exact": _get(report, "grounded", "exact_scene_accuracy"),
        "text_render_exact": _get(report, "text_render", "exact_word_accuracy"),
        "reasoning_accuracy": _get(report, "reasoning", "accuracy"),
        "t2i_fd": _get(t2i, split, str(best), "fd"),
    }


def grid_path(json_path: Path, task: str) -> Path:
    return json_path.with_name(f"{json_path.stem}_{task}.png")


def evaluate_all(
    checkpoint: ModelBundle,
    config: TaskEvalConfig,
    json_path: Path | None = None,
    retriever_dir: Path | None = None,
    retrieval: RetrievalPrefix | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Run every task's evaluation; writes the grids beside `json_path` when given (the JSON is the caller's)."""
    oracle = Oracle(checkpoint.world)
    cases = build_cases(checkpoint, config)
    retriever = load_fd_retriever(retriever_dir, checkpoint.world.image_size)
    report: dict[str, object] = {"checkpoint": str(checkpoint.directory), "split": config.split, "n": config.n}
    grids: dict[str, list[list[Tile]]] = {}
    seconds: dict[str, float] = {}

    def timed(task: str, run: object) -> None:
        if task not in config.tasks:
            return
        start = time.perf_counter()
        result: TaskResult = run()  # type: ignore[operator]
        seconds[task] = time.perf_counter() - start
        report[task], grids[task] = result.metrics, result.grid
        if progress:
            print(f"eval all: {task} done in {seconds[task]:.1f} s", flush=True)

    def t2i() -> TaskResult:
        return TaskResult(*evaluate_t2i_methods(checkpoint, config, oracle, retriever, retrieval))

    # More questions than cases: their own (longer) case list, whose first n scenes are the other tasks'; built
    # only when a question task runs.
    asks = {"vqa", "reasoning"} & set(config.tasks)
    more = config.questions != config.n and asks
    questions = build_cases(checkpoint, replace(config, n=config.questions)) if more else cases
    timed("t2i", t2i)
    timed("caption", lambda: _caption(checkpoint, config, json_path))
    timed("vqa", lambda: evaluate_questions(checkpoint, questions, config, reasoning=False))
    timed("reasoning", lambda: evaluate_questions(checkpoint, questions, config, reasoning=True))
    timed("edit", lambda: evaluate_edits(checkpoint, cases, config, oracle, retriever=retriever))
    timed("infill", lambda: evaluate_infill(checkpoint, cases, config, oracle))
    timed("segmentation", lambda: evaluate_segmentation(checkpoint, cases, config))
    reranker = retriever_reranker(checkpoint, retriever)
    timed("seg2img", lambda: evaluate_seg2img(checkpoint, cases, config, oracle, reranker=reranker))
    timed("grounded", lambda: evaluate_grounded(checkpoint, cases, config, oracle, retriever=retriever))
    timed("text_render", lambda: evaluate_text_render(checkpoint, cases, config, oracle, retriever=retriever))
    report["vq_ceiling"] = vq_ceiling(checkpoint, cases, oracle)
    report["seconds"] = seconds
    report["summary"] = summarize(report, config.split)
    if json_path is not None:
        for task in config.tasks:
            if grids.get(task):
                title = f"{task}, {config.split} split: {checkpoint.directory.name}"
                save_grid(grids[task], grid_path(json_path, task), title=title)
    return report


def vq_ceiling(checkpoint: ModelBundle, cases: TaskCases, oracle: Oracle) -> dict[str, object]:
    """What the image tokenizer alone allows: the oracle on VQ round trips of the true test images. An image
    task's exact-scene accuracy can hardly exceed `scene_exact_accuracy`, text rendering `word_accuracy`, and
    segmentation mIoU the segmentation section's own `vq_ceiling`."""
    scenes = [oracle.parse(p, expect_text=False) for p in decode_codes(checkpoint, cases.images)]
    words = [oracle.parse(p, expect_text=True) for p in decode_codes(checkpoint, cases.word_images)]
    return {
        "scene_exact_accuracy": mean([p.key() == t.key() for p, t in zip(scenes, cases.scenes, strict=True)]),
        "word_accuracy": mean([p.word == t.word for p, t in zip(words, cases.words, strict=True)]),
    }


def _caption(checkpoint: ModelBundle, config: TaskEvalConfig, json_path: Path | None) -> TaskResult:
    """The captioning evaluator as is; it writes its own grid."""
    caption_config = CaptionEvalConfig(
        n=config.n, batch_size=config.batch_size, seed=config.seed, split=config.split,
        grid_tiles=config.grid_rows * CAPTION_GRID_COLUMNS, grid_columns=CAPTION_GRID_COLUMNS,
    )
    path = grid_path(json_path, "caption") if json_path is not None else None
    return TaskResult(evaluate_captioning(checkpoint, caption_config, grid_path=path))
