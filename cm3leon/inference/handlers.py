"""The registry of job kinds the engine can run: `HANDLERS[kind](context, request) -> EngineResult`.

Adding a kind (e.g. when instruction tuning teaches it) is one function here and one entry in `HANDLERS`;
the model must also declare it (`capabilities.json`, see engine.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cm3leon.decoding import GenerationRequest, SamplingParams, generate, plan_batch
from cm3leon.decoding.defaults import CAPTION, TEXT_TO_IMAGE
from cm3leon.decoding.plan import SEED_BITS
from cm3leon.decoding.prompts import document_prompt_ids
from cm3leon.inference.engine import CancelCheck, Engine, ProgressSink, StageHook
from cm3leon.inference.preview import PreviewTap
from cm3leon.inference.requests import Caption, EngineResult, Progress, Sampling, TextToImage
from cm3leon.inference.retrieval import as_context, retrieve, with_context
from cm3leon.tokenizers.vocab import ImageCodes


@dataclass
class RunContext:
    engine: Engine
    progress: ProgressSink
    should_cancel: CancelCheck
    stage: StageHook
    tokens_done: int = 0
    tokens_total: int = 0

    def step(self, done: int, total: int) -> None:
        self.tokens_done, self.tokens_total = done, total
        self.progress(Progress(done, total))

    def preview(self, image: np.ndarray) -> None:
        self.progress(Progress(self.tokens_done, self.tokens_total, image))


def sampling_params(base: SamplingParams, sampling: Sampling, seed: int) -> SamplingParams:
    overrides = {
        name: getattr(sampling, name)
        for name in ("method", "temperature", "top_p", "guidance_scale", "num_candidates")
        if getattr(sampling, name) is not None
    }
    return base.replace(seed=seed, **overrides)


def base_seed(sampling: Sampling) -> int:
    return sampling.seed if sampling.seed is not None else secrets.randbits(SEED_BITS - 4)


def decode(
    context: RunContext, requests: Sequence[GenerationRequest], tap: Any = None, scorer: Any = None
) -> list[Any]:
    engine = context.engine
    attributes = {"requests": len(requests), "target": requests[0].target}
    with context.stage("decoding", attributes), engine.hooked(tap):
        return generate(
            engine.model,
            engine.vocab,
            requests,
            image_decoder=engine.decode_codes if requests[0].target == "image" else None,
            progress=context.step,
            should_cancel=context.should_cancel,
            scorer=scorer,
        )


def text_to_image(context: RunContext, request: TextToImage) -> EngineResult:
    engine, vocab = context.engine, context.engine.vocab
    if not 1 <= request.num_images <= engine.config.max_num_images:
        raise ValueError(f"num_images must lie in [1, {engine.config.max_num_images}], got {request.num_images}")
    seed = base_seed(request.sampling)
    documents = []
    if request.sampling.retrieved_k and engine.memory is not None and engine.retriever is not None:
        with context.stage("retrieval", {"k": request.sampling.retrieved_k}):
            documents = retrieve(engine.memory, engine.retriever, request.prompt, None, request.sampling.retrieved_k)
    query = document_prompt_ids(vocab, [request.prompt], "image")
    budget = engine.model.config.max_seq_len - vocab.codes_per_image  # the image block must still fit
    prompt_ids, used = with_context(vocab, documents, query, budget)
    base = engine.defaults[TEXT_TO_IMAGE]
    requests = [
        GenerationRequest(
            prompt_ids=prompt_ids, target="image", params=sampling_params(base, request.sampling, seed + i)
        )
        for i in range(request.num_images)
    ]
    plan = plan_batch(vocab, requests)
    watched = [plan.groups[groups[0]].full_row for groups in plan.request_groups]
    tap = PreviewTap(vocab, watched, engine.decode_codes, context.preview, engine.config.previews_per_image)
    results = decode(context, requests, tap if engine.config.previews_per_image else None)
    arrays = [np.asarray(image) for result in results for image in result.images]
    if engine.config.previews_per_image:
        context.preview(np.concatenate(arrays[: len(requests)], axis=1))  # the last preview: the full images
    return EngineResult(
        images=arrays,
        retrieved=as_context(used),
        prompt_tokens=len(prompt_ids) * len(requests),
        generated_tokens=sum(len(r.token_ids) for r in results),
        seed=seed,
    )


def brevity_scorer(eos_id: int) -> Callable[..., list[float]]:
    """Scores candidates by shortness; a caption cut off before `<eos>` scores lowest."""

    def score(request: GenerationRequest, prompt: Sequence[int], candidates: Sequence[Sequence[int]]) -> list[float]:
        return [-float(len(c)) if c and c[-1] == eos_id else float("-inf") for c in candidates]

    return score


def caption(context: RunContext, request: Caption) -> EngineResult:
    engine, vocab = context.engine, context.engine.vocab
    image = engine.fit_image(request.image)  # type: ignore[arg-type]
    seed = base_seed(request.sampling)
    documents = []
    if request.sampling.retrieved_k and engine.memory is not None and engine.retriever is not None:
        with context.stage("retrieval", {"k": request.sampling.retrieved_k}):
            documents = retrieve(engine.memory, engine.retriever, None, image, request.sampling.retrieved_k)
    query = document_prompt_ids(vocab, [ImageCodes.of(engine.encode_image(image))], "text")
    base = engine.defaults[CAPTION]
    scorer = None
    if request.style == "short":
        # A pretrained model has no style control; it saw short and detailed captions, so sampling a few and
        # keeping the shortest complete one gives a short caption.
        base = base.replace(method="sample", temperature=1.0, num_candidates=engine.config.short_caption_candidates)
        scorer = brevity_scorer(vocab.eos_id)
    params = sampling_params(base, request.sampling, seed)
    budget = engine.model.config.max_seq_len - params.max_new_tokens
    prompt_ids, used = with_context(vocab, documents, query, budget)
    room = engine.model.config.max_seq_len - len(prompt_ids) + 1  # the last token is never fed back
    params = params.replace(max_new_tokens=max(1, min(params.max_new_tokens, room)))
    result = decode(context, [GenerationRequest(prompt_ids=prompt_ids, target="text", params=params)], scorer=scorer)[0]
    return EngineResult(
        text=result.text.strip(),
        retrieved=as_context(used),
        prompt_tokens=len(prompt_ids),
        generated_tokens=sum(len(c.token_ids) for c in result.candidates),
        seed=seed,
    )


# kind -> handler. The SFT kinds (visual_question, edit, infill, segmentation, structure_guided,
# grounded_generation, text_rendering) get an entry when their task formats are wired in.
HANDLERS: dict[str, Callable[[RunContext, Any], EngineResult]] = {
    "text_to_image": text_to_image,
    "caption": caption,
}
