"""The text->image section of `eval all`: every decoding method on the test and compositional splits, the
Fréchet distance of each method's images to the true renders (in the retriever's image features), and, when a
retrieval prefix is given, CFG with retrieved documents prepended.

Built from the pieces of `t2i_eval` (scenes, captions, method parameters, oracle scoring, grid) so both
evaluations score text->image identically; this one also keeps the images for the Fréchet distance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cm3leon.bundle import ModelBundle
from cm3leon.data.grid import Tile
from cm3leon.data.oracle import Oracle
from cm3leon.data.render import render
from cm3leon.data.world import Scene, Split
from cm3leon.decoding import SamplingParams, document_prompt_ids
from cm3leon.decoding.defaults import TEXT_TO_IMAGE, load_decoding_defaults, params_record
from cm3leon.evaluation.decoder_setup import eval_scenes
from cm3leon.evaluation.frechet import frechet_distance, image_features
from cm3leon.evaluation.scene_metrics import verdict_label
from cm3leon.evaluation.t2i_eval import (
    MethodRun,
    T2IEvalConfig,
    method_params,
    prompt_captions,
    retriever_reranker,
    run_method,
    save_t2i_grid,
    score_generated_images,
)
from cm3leon.evaluation.task_cases import TaskEvalConfig
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.decode import sample_image_outputs

# Captions -> the retrieved documents' ids to put before each prompt (`<bos> doc <eos>` ...), most relevant last.
RetrievalPrefix = Callable[[Sequence[str]], list[list[int]]]
WITH_RETRIEVAL = "cfg_retrieval"


def load_fd_retriever(directory: Path | None, image_size: int) -> Retriever | None:
    """The retriever whose image tower gives the Fréchet features, or None when absent or for another image size."""
    if directory is None or not (Path(directory) / "retriever_config.json").exists():
        return None

    retriever = Retriever.from_pretrained(directory)
    return retriever if retriever.config.image_size == image_size else None


def generated_fd(
    retriever: Retriever | None, generated: np.ndarray, scenes: Sequence[Scene], checkpoint: ModelBundle
) -> float | None:
    if retriever is None or len(scenes) < 2:
        return None
    real = np.stack([render(scene, checkpoint.world).image for scene in scenes])
    return frechet_distance(image_features(retriever, generated), image_features(retriever, real))


def retrieval_run(
    checkpoint: ModelBundle, oracle: Oracle, scenes: Sequence[Scene], captions: Sequence[str], run: MethodRun,
    retrieval: RetrievalPrefix, batch_size: int, seed: int,
) -> MethodRun:
    """`run`'s decoding again, with the retrieved documents of each caption before its prompt."""
    prefixes = retrieval(captions)
    prompts = [
        [*prefix, *document_prompt_ids(checkpoint.vocab, [caption], "image")]
        for prefix, caption in zip(prefixes, captions, strict=True)
    ]
    images = sample_image_outputs(checkpoint, prompts, run.params, batch_size, seed).pixels(checkpoint)
    metrics, predicted = score_generated_images(oracle, scenes, images)
    return MethodRun(run.params, images, predicted, metrics)


def evaluate_t2i_methods(
    checkpoint: ModelBundle,
    config: TaskEvalConfig,
    oracle: Oracle,
    retriever: Retriever | None = None,
    retrieval: RetrievalPrefix | None = None,
) -> tuple[dict[str, object], list[list[Tile]]]:
    """(section, grid rows): per split, per method the oracle's metrics and `fd`; `best_method` on the main split."""
    default = load_decoding_defaults(checkpoint.directory)[TEXT_TO_IMAGE]
    params = {method: method_params(method, default, config.pooled_candidates) for method in config.t2i_methods}
    section: dict[str, object] = {"split": config.split, "n": config.n}
    splits = [(Split(config.split), config.n)]
    if config.compositional and Split(config.split) is not Split.TEST_COMPOSITIONAL:
        splits.append((Split.TEST_COMPOSITIONAL, max(1, config.n // 4)))
    grid: list[list[Tile]] = []
    for split, n in splits:
        scenes = eval_scenes(checkpoint.world, split, n, config.seed)
        captions = prompt_captions(scenes, checkpoint, config.seed)
        reranker = retriever_reranker(checkpoint, retriever)
        runs = {m: run_method(checkpoint, oracle, scenes, captions, p, config.batch_size, config.seed, reranker)
                for m, p in params.items()}
        if retrieval is not None and "cfg" in runs:
            runs[WITH_RETRIEVAL] = retrieval_run(
                checkpoint, oracle, scenes, captions, runs["cfg"], retrieval, config.batch_size, config.seed
            )
        for run in runs.values():
            run.metrics["fd"] = generated_fd(retriever, run.images, scenes, checkpoint)
        section[split.value] = {method: run.metrics for method, run in runs.items()}
        if split is Split(config.split):
            grid = [
                [(render(scenes[i], checkpoint.world).image, f"prompt: {captions[i]}")]
                + [(run.images[i], f"{m}: {verdict_label(run.predicted[i], scenes[i], checkpoint.world)}")
                   for m, run in runs.items()]
                for i in range(min(config.grid_rows, len(scenes)))
            ]
    main = section[Split(config.split).value]
    section["best_method"] = max(main, key=lambda m: main[m]["exact_scene_accuracy"])  # type: ignore[index]
    section["with_retrieval"] = WITH_RETRIEVAL in main  # type: ignore[operator]
    section["fd_features"] = "retriever image tower" if retriever is not None else None
    section["reranker"] = "retriever text-image similarity" if retriever is not None else "model likelihood"
    section["decoding"] = {method: params_record(p) for method, p in params.items()}
    return section, grid


def evaluate_t2i(
    checkpoint: ModelBundle,
    config: T2IEvalConfig,
    grid_path: Path | None = None,
    defaults: SamplingParams | None = None,
    retriever: Retriever | None = None,
    retrieval: Callable[[Sequence[str]], list[list[int]]] | None = None,
) -> dict[str, object]:
    """The report: one section per method for the main split (`plain`, `cfg`, ...), the same for the
    compositional split under `test_compositional`, and the decoding parameters each method used. Writes the
    grid PNG(s) when `grid_path` is given (the compositional one beside it, suffixed `_test_compositional`).
    With a `retriever`: each method's `fd` (Fréchet distance to the true renders in its image features) and
    pooled candidates reranked by its text-image similarity. With `retrieval` (captions -> retrieved-document
    prefixes, `cm3leon.evaluation.retrieval_prefix`): a `cfg_retrieval` method, CFG with retrieved documents.
    """
    default = defaults or load_decoding_defaults(checkpoint.directory)[TEXT_TO_IMAGE]
    oracle = Oracle(checkpoint.world)
    params = {method: method_params(method, default, config.pooled_candidates) for method in config.methods}
    report: dict[str, object] = {"split": config.split, "n": config.n, "seed": config.seed}
    splits = [(Split(config.split), config.n)]
    if config.compositional and Split(config.split) is not Split.TEST_COMPOSITIONAL:
        splits.append((Split.TEST_COMPOSITIONAL, config.compositional_n))
    for split, n in splits:
        scenes = eval_scenes(checkpoint.world, split, n, config.seed)
        captions = prompt_captions(scenes, checkpoint, config.seed)
        reranker = retriever_reranker(checkpoint, retriever)
        runs = {
            method: run_method(checkpoint, oracle, scenes, captions, p, config.batch_size, config.seed, reranker)
            for method, p in params.items()
        }
        if retrieval is not None and "cfg" in runs:
            runs[WITH_RETRIEVAL] = retrieval_run(
                checkpoint, oracle, scenes, captions, runs["cfg"], retrieval, config.batch_size, config.seed
            )
        for run in runs.values():
            run.metrics["fd"] = generated_fd(retriever, run.images, scenes, checkpoint)
        section = {method: run.metrics for method, run in runs.items()}
        is_main = split is Split(config.split)
        if is_main:
            report.update(section)
        else:
            report[split.value] = section
        if grid_path is not None:
            path = grid_path if is_main else grid_path.with_name(f"{grid_path.stem}_{split.value}{grid_path.suffix}")
            title = f"text->image, {split.value} split: {checkpoint.directory.name}"
            save_t2i_grid(path, checkpoint, scenes, captions, runs, config.grid_rows, title)
    report["decoding"] = {method: params_record(p) for method, p in params.items()}
    report["reranker"] = "retriever text-image similarity" if retriever is not None else "model likelihood"
    return report
