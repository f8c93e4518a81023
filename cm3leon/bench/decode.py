"""Decoding speed of a checkpoint: CFG images at several batch sizes, pooled reranking, captioning, segmentation
maps greedy and checked against the caption (the checkpoint's segmentation default), and edits and rendered words
from one sample and checked among several (the model's caption of each sample against what was asked for, or the
retriever's similarity of each to the expected scene's caption; an edit's several samples include its redraws).

Each measurement generates real prompts of held-out scenes end to end (`generate`, VQ decode included for
images) after one warm-up call, best of `repeats` passes (the machine is shared: the best pass is the one least
disturbed), at each thread count. On a 2-core machine that other work shares, 1 thread often beats 2: both are
reported so the serving default can be chosen from numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch

from cm3leon.bundle import ModelBundle
from cm3leon.data.world import Split
from cm3leon.decoding import SamplingParams
from cm3leon.decoding.defaults import CAPTION, EDIT, SEGMENTATION, TEXT_RENDERING, TEXT_TO_IMAGE, load_decoding_defaults
from cm3leon.evaluation.caption_eval import (
    caption_token_budget,
    encode_scene_images,
    generate_captions,
    reference_captions,
)
from cm3leon.evaluation.decoder_setup import eval_scenes
from cm3leon.evaluation.t2i_eval import generate_images, method_params, prompt_captions
from cm3leon.evaluation.t2i_task_eval import load_fd_retriever
from cm3leon.evaluation.task_cases import TaskCases, TaskEvalConfig, build_cases, formatter
from cm3leon.policies.shapes.caption_check import text_render_scorer
from cm3leon.policies.shapes.edit_check import EditSettings, sample_edits
from cm3leon.policies.shapes.segmentation import SegmentationParams, segment_images
from cm3leon.presets import Presets
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.decode import sample_image_outputs

# Benchmark prompts come from the validation split: speed does not depend on the split, and test stays unseen.
BENCH_SPLIT = Split.VAL


@dataclass(frozen=True)
class DecodeBenchConfig(Presets):
    """What to time. Presets: `standard` (bench/results/decode.json) and `quick` (tests)."""

    cfg_batch_sizes: tuple[int, ...] = (1, 8, 32)
    pooled_batch_size: int = 1
    caption_batch_size: int = 8
    segmentation_batch_size: int = 8
    checked_batch_size: int = 8  # edits and rendered words
    # Samples per checked edit or word when the checkpoint's own default draws one (the check is then off there).
    check_candidates: int = 8
    threads: tuple[int, ...] = (1, 2)
    repeats: int = 2
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "standard": {},
        "quick": dict(
            cfg_batch_sizes=(1, 2), caption_batch_size=2, segmentation_batch_size=2, checked_batch_size=2,
            check_candidates=2, threads=(1,), repeats=1,
        ),
    }


def _best_seconds(work: Callable[[], float], repeats: int) -> float:
    """Fastest of `repeats` timed passes of `work` (which returns its own seconds), after one warm-up."""
    work()
    return min(work() for _ in range(repeats))


def _checked_task_runs(
    checkpoint: ModelBundle, defaults: dict[str, SamplingParams], cases: TaskCases, config: DecodeBenchConfig,
    retriever: Retriever | None,
) -> dict[str, Callable[[], float]]:
    """Timed runs of the checked image tasks, `<task>_{single,checked<k>,retriever<k>}` -> seconds for the batch
    (the retriever's runs only with a retriever). A checked run includes building its scorer, and an edit's its plan
    (the source captioned) and its redraws, as a job does."""
    fmt, batch = formatter(checkpoint), config.checked_batch_size
    edit_prompts = [fmt.edit(e, s, None).prompt for e, s in zip(cases.edits, cases.edit_sources, strict=True)]
    word_prompts = [fmt.text_render(word, None).prompt for word in cases.words]
    instructions = [case.instruction for case in cases.edits]
    choosers: dict[str, Retriever | None] = {"checked": None, **({"retriever": retriever} if retriever else {})}
    edit_settings = EditSettings.from_defaults(defaults)

    def timed_edits(params: SamplingParams, chooser: Retriever | None) -> float:
        start = time.perf_counter()
        settings = replace(edit_settings, direct=params)
        sample_edits(checkpoint, edit_prompts, cases.edit_sources, instructions, settings, batch, config.seed, chooser)
        return time.perf_counter() - start

    def timed_words(params: SamplingParams, chooser: Retriever | None) -> float:
        start = time.perf_counter()
        checked = params.num_candidates > 1
        scorer = text_render_scorer(checkpoint, word_prompts, cases.words, chooser) if checked else None
        sample_image_outputs(checkpoint, word_prompts, params, batch, config.seed, scorer).pixels(checkpoint)
        return time.perf_counter() - start

    runs: dict[str, Callable[[], float]] = {}
    for task, timed in (("edit", timed_edits), ("text_render", timed_words)):
        params = defaults[EDIT if task == "edit" else TEXT_RENDERING]
        checked = params if params.num_candidates > 1 else params.replace(num_candidates=config.check_candidates)
        runs[f"{task}_single"] = partial(timed, params.replace(num_candidates=1), None)
        for name, chooser in choosers.items():
            runs[f"{task}_{name}{checked.num_candidates}"] = partial(timed, checked, chooser)
    return runs


def bench_decode(
    checkpoint_dir: Path, config: DecodeBenchConfig | None = None, retriever_dir: Path | None = None
) -> dict[str, Any]:
    """Flat results: `t{threads}_cfg_b{batch}_images_per_s` / `_ms_per_image`, `t{threads}_pooled{k}_b{batch}_...`,
    `t{threads}_caption_b{batch}_tokens_per_s` / `_captions_per_s`, `t{threads}_segmentation_{greedy,checked}_b{batch}
    _maps_per_s`, `t{threads}_{edit,text_render}_{single,checked<k>,retriever<k>}_b{batch}_images_per_s` (delivered
    images; `retriever<k>`: chosen by the retriever in `retriever_dir`, default the checkpoint's `retriever/`, as
    serving does where one is loaded)."""
    config = config or DecodeBenchConfig()
    checkpoint = ModelBundle.load(checkpoint_dir, require_vq=True)
    retriever = load_fd_retriever(retriever_dir or Path(checkpoint_dir) / "retriever", checkpoint.world.image_size)
    defaults = load_decoding_defaults(checkpoint_dir)
    cfg = method_params("cfg", defaults[TEXT_TO_IMAGE])
    pooled = method_params("pooled", defaults[TEXT_TO_IMAGE])
    most_prompts = max(
        *config.cfg_batch_sizes, config.pooled_batch_size, config.caption_batch_size, config.segmentation_batch_size
    )
    scenes = eval_scenes(checkpoint.world, BENCH_SPLIT, most_prompts, config.seed)
    captions = prompt_captions(scenes, checkpoint, config.seed)
    caption_scenes = scenes[: config.caption_batch_size]
    caption_params: SamplingParams = defaults[CAPTION].replace(
        max_new_tokens=caption_token_budget(checkpoint, reference_captions(caption_scenes, checkpoint.world))
    )
    caption_images = encode_scene_images(checkpoint, caption_scenes, config.caption_batch_size)
    segmentation_batch = config.segmentation_batch_size
    map_images = encode_scene_images(checkpoint, scenes[:segmentation_batch], segmentation_batch)
    map_prompts = [formatter(checkpoint).segmentation(image, None).prompt for image in map_images]
    map_settings = {
        "greedy": SegmentationParams(SamplingParams.preset("segmentation"), defaults[CAPTION]),
        "checked": SegmentationParams(defaults[SEGMENTATION], defaults[CAPTION]),
    }

    def segment(settings: SegmentationParams) -> float:
        start = time.perf_counter()
        segment_images(checkpoint, map_prompts, map_images, settings, segmentation_batch, config.seed)
        return time.perf_counter() - start

    checked_runs = _checked_task_runs(
        checkpoint, defaults, build_cases(checkpoint, TaskEvalConfig(n=config.checked_batch_size), BENCH_SPLIT), config,
        retriever,
    )
    results: dict[str, Any] = {
        "checkpoint": str(checkpoint_dir),
        "parameters": checkpoint.model.num_parameters(),
        "codes_per_image": checkpoint.vocab.codes_per_image,
        "cfg_guidance_scale": cfg.guidance_scale,
        "pooled_candidates": pooled.num_candidates,
        "caption_candidates": caption_params.num_candidates,  # > 1: sampled and reranked by the noisy channel
        "segmentation_check_candidates": defaults[SEGMENTATION].num_candidates,  # 1: the check is off
    }
    threads_before = torch.get_num_threads()
    try:
        for threads in config.threads:
            torch.set_num_threads(threads)
            prefix = f"t{threads}"
            for batch in config.cfg_batch_sizes:
                seconds = _best_seconds(
                    lambda b=batch: generate_images(checkpoint, captions[:b], cfg, b, config.seed)[1], config.repeats
                )
                results[f"{prefix}_cfg_b{batch}_images_per_s"] = batch / seconds
                results[f"{prefix}_cfg_b{batch}_ms_per_image"] = 1000 * seconds / batch
            batch = config.pooled_batch_size
            seconds = _best_seconds(
                lambda b=batch: generate_images(checkpoint, captions[:b], pooled, b, config.seed)[1], config.repeats
            )
            name = f"{prefix}_pooled{pooled.num_candidates}_b{batch}"
            results[f"{name}_images_per_s"] = batch / seconds  # reranked images delivered, not candidates drawn
            results[f"{name}_ms_per_image"] = 1000 * seconds / batch
            caption_runs = [
                generate_captions(checkpoint, caption_images, caption_params, config.caption_batch_size, config.seed)
                for _ in range(config.repeats + 1)  # the first run is the warm-up
            ]
            fastest = min(caption_runs[1:], key=lambda run: run.seconds)
            caption_name = f"{prefix}_caption_b{config.caption_batch_size}"
            results[f"{caption_name}_tokens_per_s"] = fastest.generated_tokens / fastest.seconds  # all candidates'
            results[f"{caption_name}_captions_per_s"] = len(fastest.captions) / fastest.seconds  # reranked, delivered
            for name, settings in map_settings.items():
                seconds = _best_seconds(lambda s=settings: segment(s), config.repeats)
                results[f"{prefix}_segmentation_{name}_b{segmentation_batch}_maps_per_s"] = segmentation_batch / seconds
            for name, run in checked_runs.items():
                images = config.checked_batch_size
                results[f"{prefix}_{name}_b{images}_images_per_s"] = images / _best_seconds(run, config.repeats)
    finally:
        torch.set_num_threads(threads_before)
    return results
