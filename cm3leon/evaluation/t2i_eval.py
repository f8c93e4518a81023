"""Text->image evaluation: generate from held-out detailed captions and let the oracle judge every image.

Flow: held-out shapes scenes (test split by default, object counts cycling 1..3) -> a seeded paraphrase of each
scene's detailed caption -> the decoder writes image codes (per method: plain sampling, CFG, optionally CD-K
and pooled reranking, with the checkpoint's decoding defaults) -> the VQ decoder paints pixels -> the oracle
parses each image (as a shapes scene) -> exact-scene and attribute accuracies. The compositional split (scenes
with held-out colour/shape pairs, never seen in training) gets its own, smaller section.

Scoring given images is the pure function `score_generated_images`, separate from generation, so tests can
score rendered ground truth (accuracy 1) and images of the wrong scenes (accuracy 0).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cm3leon.bundle import ModelBundle
from cm3leon.data.grid import Tile, save_grid
from cm3leon.data.language import detailed_caption
from cm3leon.data.oracle import Oracle
from cm3leon.data.render import render
from cm3leon.data.world import Scene, Split
from cm3leon.decoding import GenerationRequest, SamplingParams
from cm3leon.decoding.rerank import LikelihoodScorer, Scorer, no_rerank
from cm3leon.evaluation.scene_metrics import summarize_predictions, verdict_label
from cm3leon.presets import Presets
from cm3leon.retrieval.rerank import RetrieverScorer
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.decode import request_seed

# Evaluation method -> the SamplingParams method it decodes with ("plain" is TopP sampling without guidance).
T2I_METHODS: dict[str, str] = {"plain": "sample", "cfg": "cfg", "cdk": "cdk", "pooled": "pooled"}
# Candidates of the pooled method unless a run asks for more: the `pooled` preset's (8, as the evaluation protocol).
POOLED_CANDIDATES = SamplingParams.preset("pooled").num_candidates


@dataclass(frozen=True)
class T2IEvalConfig(Presets):
    """Size and shape of one text->image evaluation. Presets: `standard` (reported numbers), `quick` (tests)."""

    n: int = 200
    batch_size: int = 16
    seed: int = 0
    split: str = Split.TEST.value
    methods: tuple[str, ...] = ("plain", "cfg")
    # The compositional split as a second section; it is a generalisation probe, so a quarter of `n` is enough.
    compositional: bool = True
    compositional_fraction: float = 0.25
    grid_rows: int = 12  # scenes shown in the grid PNG
    pooled_candidates: int = POOLED_CANDIDATES

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"standard": {}, "quick": dict(n=4, batch_size=4, grid_rows=4)}

    def __post_init__(self) -> None:
        check_pooled_candidates(self.pooled_candidates)
        unknown = set(self.methods) - set(T2I_METHODS)
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {sorted(T2I_METHODS)}, got {self.methods}")
        if Split(self.split) in (Split.TRAIN, Split.VAL):
            raise ValueError(f"the evaluation reports held-out test splits; got {self.split} (the sweep uses val)")
        if self.n < 1 or self.batch_size < 1:
            raise ValueError("n and batch_size must be >= 1")

    @property
    def compositional_n(self) -> int:
        return max(1, round(self.n * self.compositional_fraction))


def check_pooled_candidates(count: int) -> None:
    if count < 2:
        raise ValueError(f"pooled decoding needs at least 2 candidates (one per half), got {count}")


def method_params(method: str, default: SamplingParams, pooled_candidates: int = POOLED_CANDIDATES) -> SamplingParams:
    """The SamplingParams of an evaluation method: the checkpoint's text->image default (temperature, top-p,
    guidance scale) with the method swapped in; pooled decodes `pooled_candidates` (the issue's protocol: 8)."""
    if method not in T2I_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(T2I_METHODS)}")
    params = default.replace(method=T2I_METHODS[method])
    if method == "pooled":
        params = params.replace(num_candidates=pooled_candidates)
    return params


def generate_images(
    checkpoint: ModelBundle,
    captions: Sequence[str],
    params: SamplingParams,
    batch_size: int,
    seed: int,
    reranker: Scorer | None = None,
) -> tuple[np.ndarray, float]:
    """(N, H, W, 3) uint8 images generated from `captions` (request i seeded by `request_seed(seed, i)`, so
    every method and setting sees the same random numbers), and the wall seconds generation + VQ decode took.
    Pooled candidates are reranked by `reranker` (default: the model's likelihood)."""
    scorer = no_rerank if params.num_candidates == 1 else reranker
    images: list[np.ndarray] = []
    start = time.perf_counter()
    for first in range(0, len(captions), batch_size):
        requests = [
            GenerationRequest(prompt=[caption], target="image", params=params.replace(seed=request_seed(seed, i)))
            for i, caption in enumerate(captions[first : first + batch_size], start=first)
        ]
        results = checkpoint.generate(requests, image_decoder=checkpoint.image_tokenizer.decode, scorer=scorer)
        images.extend(np.asarray(result.images[0]) for result in results)
    return np.stack(images), time.perf_counter() - start


def score_generated_images(
    oracle: Oracle, scenes: Sequence[Scene], images: Sequence[np.ndarray] | np.ndarray
) -> tuple[dict[str, object], list[Scene]]:
    """The oracle's reading of each image (as a shapes scene) against the scene it should show: the metrics
    of `summarize_predictions` and the parsed scenes."""
    predicted = [oracle.parse(image, expect_text=False) for image in images]
    return summarize_predictions(scenes, predicted), predicted


@dataclass
class MethodRun:
    """One method on one split: its images, the oracle's readings and the metrics."""

    params: SamplingParams
    images: np.ndarray
    predicted: list[Scene]
    metrics: dict[str, object]


def run_method(
    checkpoint: ModelBundle,
    oracle: Oracle,
    scenes: Sequence[Scene],
    captions: Sequence[str],
    params: SamplingParams,
    batch_size: int,
    seed: int,
    reranker: Scorer | None = None,
) -> MethodRun:
    images, seconds = generate_images(checkpoint, captions, params, batch_size, seed, reranker)
    metrics, predicted = score_generated_images(oracle, scenes, images)
    metrics["images_per_s"] = len(images) / seconds
    return MethodRun(params, images, predicted, metrics)


def retriever_reranker(checkpoint: ModelBundle, retriever: Retriever | None) -> Scorer | None:
    """The retriever's text-image similarity as the pooled reranker (None: keep the likelihood default)."""
    if retriever is None:
        return None

    fallback = LikelihoodScorer(checkpoint.model, checkpoint.vocab)
    return RetrieverScorer(retriever, checkpoint.vocab, checkpoint.image_tokenizer, fallback)


def prompt_captions(scenes: Sequence[Scene], checkpoint: ModelBundle, seed: int) -> list[str]:
    """A seeded paraphrase of each scene's detailed caption (every paraphrase names every attribute)."""
    rng = random.Random(f"{seed}:prompt-captions")
    return [detailed_caption(scene, checkpoint.world, rng) for scene in scenes]


def save_t2i_grid(
    path: Path,
    checkpoint: ModelBundle,
    scenes: Sequence[Scene],
    captions: Sequence[str],
    runs: Mapping[str, MethodRun],
    rows: int,
    title: str,
) -> Path:
    """Per scene: the ground-truth render labelled with the prompt, then each method's sample and verdict."""
    world = checkpoint.world
    grid: list[list[Tile]] = []
    for index in range(min(rows, len(scenes))):
        row: list[Tile] = [(render(scenes[index], world).image, f"prompt: {captions[index]}")]
        for method, run in runs.items():
            row.append((run.images[index], f"{method}: {verdict_label(run.predicted[index], scenes[index], world)}"))
        grid.append(row)
    return save_grid(grid, path, title=title)
