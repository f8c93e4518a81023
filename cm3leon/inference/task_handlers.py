"""Handlers of the instruction-tuned job kinds, on the generic path: each builds its prompt with the training format
(`task_prompts`) and decodes it with progress, cancellation and previews:

    visual_question      greedy answer; a model tuned with worked answers (training.json): its description
                         reranked as captions are, then the answer (`cm3leon.tasks.worked`)
    edit                 three-stream guidance (the model's edit defaults; the request may override both scales)
    infill               CM3 sentinels, the evaluation's greedy span loop, one region after the other
    segmentation         greedy map (a model of a world: classes by the world's legend)
    structure_guided     CFG (the model's structure defaults); several candidates reranked by the retriever
    grounded_generation  the model's grounded defaults
    text_rendering       the model's text-rendering defaults

A model may replace a kind's path with a named policy (`cm3leon.inference.policies`), e.g. the shapes world's
edit planning. Retrieval is only trained for text->image and captioning (`cm3leon.kinds`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cm3leon.data.questions import final_answer
from cm3leon.decoding import GenerationRequest, SamplingParams, Scorer
from cm3leon.decoding.defaults import CAPTION, EDIT, GROUNDED_GENERATION, STRUCTURE_GUIDED, TEXT_RENDERING
from cm3leon.inference.policies import reader_for
from cm3leon.inference.running import (
    RunContext,
    base_seed,
    decode,
    default_params,
    fit_text_budget,
    generate_images,
    sampling_params,
)
from cm3leon.inference.task_prompts import (
    edit_prompt,
    grounded_prompt,
    image_codes,
    infill_prompt,
    segmentation_prompt,
    structure_prompt,
    text_rendering_prompt,
    visual_question_prompt,
)
from cm3leon.kinds import Edit, GroundedGeneration, Infill, Segmentation, StructureGuided, TextRendering, VisualQuestion
from cm3leon.requests import EngineResult
from cm3leon.tasks.decode import SEGMENTATION_PARAMS, decode_codes, generate_infills, infill_plan
from cm3leon.tasks.parsing import infill_result, text_answer
from cm3leon.tasks.worked import DescriptionScorer, answer_worked

# Answers are decoded greedily, as the evaluation scores them (one right answer per question).
ANSWER_PARAMS = SamplingParams.preset("greedy_text")
# A segmentation request has no sampling options: its caption and any redrawn maps use this seed, so one image
# always gets one map.
SEGMENTATION_SEED = 0


# ----- handlers -----


def image_job(
    context: RunContext, prompt: list[int], params: SamplingParams, scorer: Scorer | None = None
) -> EngineResult:
    request = GenerationRequest(prompt_ids=prompt, target="image", params=params)
    results, images = generate_images(context, [request], scorer)
    generated = sum(len(result.token_ids) for result in results)
    return EngineResult(images=images, prompt_tokens=len(prompt), generated_tokens=generated, seed=params.seed or 0)


def visual_question(context: RunContext, request: VisualQuestion) -> EngineResult:
    engine, seed = context.engine, base_seed(request.sampling)
    prompt = visual_question_prompt(engine, request)
    if engine.bundle.answers_worked:
        return worked_question(context, request, prompt, seed)
    params = fit_text_budget(engine, sampling_params(ANSWER_PARAMS, request.sampling, seed), prompt)
    [result] = decode(context, [GenerationRequest(prompt_ids=prompt, target="text", params=params)])
    text = shown_answer(text_answer(result.token_ids, engine.bundle.vocab), request.explain)
    return EngineResult(text=text, prompt_tokens=len(prompt), generated_tokens=len(result.token_ids), seed=seed)


def worked_question(context: RunContext, request: VisualQuestion, prompt: list[int], seed: int) -> EngineResult:
    """A model tuned with worked VQA answers: the description chosen among samples as captions are (the model's
    caption defaults), then the answer greedily (`cm3leon.tasks.worked`). A reasoning question's worked steps
    take the description's place (the evaluation measures this two-step decoding on VQA questions only)."""
    engine = context.engine
    bundle = engine.bundle
    params = fit_text_budget(engine, sampling_params(bundle.defaults[CAPTION], request.sampling, seed), prompt)
    [answer] = answer_worked(
        bundle.vocab, [prompt], params, [seed], lambda requests, scorer: decode(context, requests, scorer=scorer),
        DescriptionScorer(bundle.model, bundle.vocab),
    )
    text = shown_answer(answer.text, request.explain)
    return EngineResult(text=text, prompt_tokens=len(prompt), generated_tokens=answer.generated_tokens, seed=seed)


def shown_answer(answer: str, explain: bool) -> str:
    """A worked answer ("... so the answer is N") whole when `explain`, else only its N; other answers as is."""
    final = final_answer(answer)
    return answer if explain or final is None else final


def edit_params(context: RunContext, request: Edit, seed: int) -> SamplingParams:
    """The model's edit defaults with the request's sampling options and guidance scales laid over them."""
    params = sampling_params(context.bundle.defaults[EDIT], request.sampling, seed)
    scales = {
        "guidance_scale": request.text_guidance_scale,
        "image_guidance_scale": request.image_guidance_scale,
        "source_copy_bias": request.source_copy_bias,
    }
    return params.replace(**{name: value for name, value in scales.items() if value is not None})


def edit(context: RunContext, request: Edit) -> EngineResult:
    seed = base_seed(request.sampling)
    return image_job(context, edit_prompt(context.engine, request), edit_params(context, request, seed))


def segmentation(context: RunContext, request: Segmentation) -> EngineResult:
    """The map decoded greedily (deterministic: no sampling options), as the model's request reader shows maps."""
    prompt = segmentation_prompt(context.engine, request)
    greedy = image_job(context, prompt, SEGMENTATION_PARAMS.replace(seed=SEGMENTATION_SEED))  # with previews
    return reader_for(context.bundle).segmentation_result(greedy)


def structure_guided(context: RunContext, request: StructureGuided) -> EngineResult:
    params = default_params(context, STRUCTURE_GUIDED, request.sampling)
    # The prompt ends with the caption: candidates are reranked against it, as for text->image.
    return image_job(context, structure_prompt(context.engine, request), params, context.engine.image_reranker)


def grounded_generation(context: RunContext, request: GroundedGeneration) -> EngineResult:
    params = default_params(context, GROUNDED_GENERATION, request.sampling)
    return image_job(context, grounded_prompt(context.engine, request), params)


def text_rendering(context: RunContext, request: TextRendering) -> EngineResult:
    params = default_params(context, TEXT_RENDERING, request.sampling)
    return image_job(context, text_rendering_prompt(context.engine, request), params)


def infill(context: RunContext, request: Infill) -> EngineResult:
    """Each region in turn is hidden behind CM3 sentinels and filled greedily (the evaluation's loop); the next
    region sees the completed codes. Decoding is greedy, so only the seed of `sampling` is accepted."""
    engine, sampling = context.engine, request.sampling
    seed = base_seed(sampling)  # reported only: greedy decoding draws nothing
    bundle, codes = engine.bundle, image_codes(engine, request.image)
    prompts = [infill_prompt(engine, codes, request, i) for i in range(len(request.regions))]  # all checked first
    steps = [len(infill_plan(engine.bundle.vocab, lengths)) for _, lengths in prompts]
    total, done, prompt_tokens = sum(steps), 0, 0
    for index, count in enumerate(steps):
        prompt, lengths = infill_prompt(engine, codes, request, index)  # over the codes completed so far
        if len(prompt) + count > engine.bundle.model.config.max_seq_len:
            raise ValueError(f"text: the infill prompt ({len(prompt)} tokens) leaves no room for the region")

        def step(n: int, _total: int, offset: int = done) -> None:
            context.step(offset + n, total)

        with context.stage("decoding", {"requests": 1, "target": "infill", "region": index}):
            [output] = generate_infills(bundle, [prompt], [lengths], 1, step, context.should_cancel)
        completed = infill_result(prompt, output, engine.bundle.vocab)
        if completed is None:  # the loop forces every sentinel, so this is a bug, not a bad input
            raise RuntimeError(f"infill output of region {index} did not reassemble into an image")
        codes, done, prompt_tokens = completed, done + count, prompt_tokens + len(prompt)
    image = decode_codes(bundle, [codes])[0]
    return EngineResult(images=[image], prompt_tokens=prompt_tokens, generated_tokens=total, seed=seed)


SFT_HANDLERS: dict[str, Callable[[RunContext, Any], EngineResult]] = {
    "visual_question": visual_question,
    "edit": edit,
    "infill": infill,
    "segmentation": segmentation,
    "structure_guided": structure_guided,
    "grounded_generation": grounded_generation,
    "text_rendering": text_rendering,
}
