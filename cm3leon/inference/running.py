"""Running one request on the engine: the context a handler gets (progress, cancellation, stage hooks) and the
decoding helpers every handler shares (seeds, per-request sampling overrides, images with previews).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cm3leon.decoding import GenerationRequest, GenerationResult, SamplingParams, Scorer, no_rerank
from cm3leon.decoding.plan import SEED_BITS
from cm3leon.inference.preview import PreviewTap
from cm3leon.kinds import SAMPLING_OPTIONS
from cm3leon.requests import Progress, Sampling

if TYPE_CHECKING:
    from cm3leon.bundle import ModelBundle
    from cm3leon.inference.engine import Engine

# A request is planned alone by the scheduler, its candidates in order: group 0 is candidate 0.
FIRST_CANDIDATE_GROUP = 0
ProgressSink = Callable[[Progress], None]
CancelCheck = Callable[[], bool]
# A stage hook opens a span (or anything) around "retrieval", "decoding", ...: (stage name, attributes).
StageHook = Callable[[str, Mapping[str, Any]], contextlib.AbstractContextManager]


def no_stage(name: str, attributes: Mapping[str, Any]) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass
class RunContext:
    engine: Engine
    progress: ProgressSink
    should_cancel: CancelCheck
    stage: StageHook
    tokens_done: int = 0
    tokens_total: int = 0

    @property
    def bundle(self) -> ModelBundle:
        return self.engine.bundle

    def step(self, done: int, total: int) -> None:
        self.tokens_done, self.tokens_total = done, total
        self.progress(Progress(done, total))

    def preview(self, image: np.ndarray) -> None:
        self.progress(Progress(self.tokens_done, self.tokens_total, image))


def sampling_params(base: SamplingParams, sampling: Sampling, seed: int) -> SamplingParams:
    overrides = {name: getattr(sampling, name) for name in SAMPLING_OPTIONS if getattr(sampling, name) is not None}
    return base.replace(seed=seed, **overrides)


def default_params(context: RunContext, defaults_key: str, sampling: Sampling) -> SamplingParams:
    """The model's defaults for `defaults_key` with the request's sampling options and seed laid over them."""
    return sampling_params(context.bundle.defaults[defaults_key], sampling, base_seed(sampling))


def base_seed(sampling: Sampling) -> int:
    return sampling.seed if sampling.seed is not None else secrets.randbits(SEED_BITS - 4)


def decode(
    context: RunContext,
    requests: Sequence[GenerationRequest],
    tap: PreviewTap | None = None,
    scorer: Scorer | None = None,
) -> list[GenerationResult]:
    """The requests through the model's scheduler, with the job's progress, cancellation and previews (`tap`)."""
    bundle = context.bundle
    if scorer is None and all(request.params.num_candidates == 1 for request in requests):
        scorer = no_rerank  # as the evaluations do: one candidate each, so no likelihood pass to choose
    attributes = {"requests": len(requests), "target": requests[0].target}
    with context.stage("decoding", attributes):
        return bundle.generate(
            requests,
            image_decoder=bundle.decode_codes if requests[0].target == "image" else None,
            progress=context.step,
            should_cancel=context.should_cancel,
            scorer=scorer,
            on_tick=tap,
        )


def generate_images(
    context: RunContext, requests: Sequence[GenerationRequest], scorer: Scorer | None = None
) -> tuple[list[GenerationResult], list[np.ndarray]]:
    """Image requests decoded with progressive previews (candidate 0 of each request is watched); returns the
    results and their images, uint8 (H, W, 3), in request order. Several candidates are reranked by `scorer`
    (default: the model's likelihood)."""
    engine, bundle = context.engine, context.bundle
    previews = engine.config.previews_per_image
    watched = [(index, FIRST_CANDIDATE_GROUP) for index in range(len(requests))]
    tap = PreviewTap(bundle.vocab, watched, bundle.decode_codes, context.preview, previews) if previews else None
    results = decode(context, requests, tap, scorer)
    arrays = [np.asarray(image) for result in results for image in result.images]
    if previews:
        context.preview(np.concatenate(arrays[: len(requests)], axis=1))  # the last preview: the full images
    return results, arrays


def fit_text_budget(engine: Engine, params: SamplingParams, prompt_ids: Sequence[int]) -> SamplingParams:
    """`params` with max_new_tokens cut to what the context has left after the prompt."""
    room = engine.bundle.model.config.max_seq_len - len(prompt_ids) + 1  # the last token is never fed back
    return params.replace(max_new_tokens=max(1, min(params.max_new_tokens, room)))
