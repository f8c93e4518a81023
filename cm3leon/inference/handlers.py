"""The registry of job kinds the engine can run: `HANDLERS[kind](context, request) -> EngineResult`.

Text->image and captioning (what pretraining teaches) are here; the instruction-tuned kinds are in
`task_handlers.py`. A kind runs when it has an entry here and the model declares it (`capabilities.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cm3leon.decoding import ChannelScorer, GenerationRequest, Scorer
from cm3leon.decoding.defaults import CAPTION, TEXT_TO_IMAGE
from cm3leon.decoding.prompts import document_prompt_ids
from cm3leon.inference.retrieval import as_context, retrieve, with_context
from cm3leon.inference.running import (
    RunContext,
    base_seed,
    decode,
    fit_text_budget,
    generate_images,
    sampling_params,
)
from cm3leon.inference.task_handlers import SFT_HANDLERS
from cm3leon.kinds import Caption, TextToImage
from cm3leon.requests import EngineResult
from cm3leon.tokenizers.vocab import ImageCodes


def text_to_image(context: RunContext, request: TextToImage) -> EngineResult:
    engine, vocab = context.engine, context.bundle.vocab
    if not 1 <= request.num_images <= engine.config.max_num_images:
        raise ValueError(f"num_images must lie in [1, {engine.config.max_num_images}], got {request.num_images}")
    seed = base_seed(request.sampling)
    documents = []
    k = request.sampling.retrieved_k
    k = engine.config.default_t2i_retrieved_k if k is None else k
    memory = engine.memory_for(request.sampling.memory)
    if k and memory is not None and engine.bundle.retriever is not None:
        with context.stage("retrieval", {"k": k, "memory": memory.collection}):
            documents = retrieve(memory, engine.bundle.retriever, request.prompt, None, k)
    query = document_prompt_ids(vocab, [request.prompt], "image")
    budget = engine.bundle.model.config.max_seq_len - vocab.codes_per_image  # the image block must still fit
    prompt_ids, used = with_context(vocab, documents, query, budget)
    base = engine.bundle.defaults[TEXT_TO_IMAGE]
    requests = [
        GenerationRequest(
            prompt_ids=prompt_ids, target="image", params=sampling_params(base, request.sampling, seed + i)
        )
        for i in range(request.num_images)
    ]
    results, arrays = generate_images(context, requests, engine.image_reranker)
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
    engine, vocab = context.engine, context.bundle.vocab
    image = engine.bundle.fit_image(request.image)  # type: ignore[arg-type]
    seed = base_seed(request.sampling)
    documents = []
    k = request.sampling.retrieved_k or 0
    memory = engine.memory_for(request.sampling.memory)
    if k and memory is not None and engine.bundle.retriever is not None:
        with context.stage("retrieval", {"k": k, "memory": memory.collection}):
            documents = retrieve(memory, engine.bundle.retriever, None, image, k)
    query = document_prompt_ids(vocab, [ImageCodes.of(engine.bundle.encode_image(image))], "text")
    base = engine.bundle.defaults[CAPTION]
    short = request.style == "short"
    if short:
        # A pretrained model has no style control; it saw short and detailed captions, so sampling a few and
        # keeping the shortest complete one gives a short caption.
        base = base.replace(method="sample", temperature=1.0, num_candidates=engine.config.short_caption_candidates)
    params = sampling_params(base, request.sampling, seed)
    scorer: Scorer | None = None
    if short:
        scorer = brevity_scorer(vocab.eos_id)
    elif params.num_candidates > 1:
        # Several detailed captions: keep the one from which the model best redraws the image (as evaluated).
        scorer = ChannelScorer(engine.bundle.model, vocab)
    budget = engine.bundle.model.config.max_seq_len - params.max_new_tokens
    prompt_ids, used = with_context(vocab, documents, query, budget)
    params = fit_text_budget(engine, params, prompt_ids)
    result = decode(context, [GenerationRequest(prompt_ids=prompt_ids, target="text", params=params)], scorer=scorer)[0]
    return EngineResult(
        text=result.text.strip(),
        retrieved=as_context(used),
        prompt_tokens=len(prompt_ids),
        generated_tokens=sum(len(c.token_ids) for c in result.candidates),
        seed=seed,
    )


# kind -> handler: pretraining's two kinds here, the instruction-tuned ones in task_handlers.py.
HANDLERS: dict[str, Callable[[RunContext, Any], EngineResult]] = {
    "text_to_image": text_to_image,
    "caption": caption,
    **SFT_HANDLERS,
}
