"""Handlers of the instruction-tuned job kinds: each builds its prompt with the training format (`task_prompts`)
and decodes it as the evaluation does (the shared loops of `cm3leon.tasks.decode`), with progress, cancellation
and previews:

    visual_question      greedy answer (a reasoning question's worked answer, or only its final answer); a model
                         tuned with worked VQA answers: the description reranked as captions are, then the answer
    edit                 three-stream guidance (the model's edit defaults; the request may override both scales);
                         several candidates: pooled with redraws of the expected scene, the retriever (else the
                         caption check) keeps one
    infill               CM3 sentinels, the evaluation's greedy span loop, one region after the other
    segmentation         greedy map (redrawn where it disagrees with the caption) -> classes by the world's legend
    structure_guided     CFG (the model's structure defaults); several candidates reranked by the retriever
    grounded_generation  the model's grounded defaults (text->image's, own candidate count), reranked likewise
    text_rendering       the model's text->image default

Retrieval is only trained for text->image and captioning, so these kinds refuse `retrieved_k`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from cm3leon.data.questions import final_answer
from cm3leon.data.render import colourise_segmentation, segmentation_legend
from cm3leon.decoding import GenerationRequest, LikelihoodScorer, SamplingParams, Scorer
from cm3leon.decoding.defaults import CAPTION, EDIT, GROUNDED, SEGMENTATION, STRUCTURE, TEXT_RENDER
from cm3leon.inference.requests import (
    Edit,
    EngineResult,
    GroundedGeneration,
    Infill,
    Sampling,
    Segmentation,
    StructureGuided,
    TextRendering,
    VisualQuestion,
)
from cm3leon.inference.running import (
    SAMPLING_OPTIONS,
    RunContext,
    base_seed,
    decode,
    fit_text_budget,
    generate_images,
    sampling_params,
)
from cm3leon.inference.task_inputs import grounded_spec_of, text_scene_of
from cm3leon.inference.task_prompts import (
    edit_prompt,
    grounded_prompt,
    image_codes,
    infill_prompt,
    segmentation_prompt,
    structure_prompt,
    task_setup,
    text_rendering_prompt,
    visual_question_prompt,
)
from cm3leon.tasks.caption_check import expected_caption_scorer, text_render_scorer
from cm3leon.tasks.decode import SEGMENTATION_PARAMS, decode_codes, generate_infills, infill_plan
from cm3leon.tasks.edit_check import EditSettings, edit_scorer, plan_edits, redraw_wins
from cm3leon.tasks.parsing import infill_result, segmentation_map, text_answer
from cm3leon.tasks.segmentation import MapDecoder, SegmentationParams, check_maps
from cm3leon.tasks.worked import DescriptionScorer, answer_worked

# Answers are decoded greedily, as the evaluation scores them (one right answer per question).
ANSWER_PARAMS = SamplingParams.preset("greedy_text")
# A segmentation request has no sampling options: its caption and any redrawn maps use this seed, so one image
# always gets one map.
SEGMENTATION_SEED = 0


def no_retrieval(sampling: Sampling, kind: str) -> None:
    if sampling.retrieved_k:
        raise ValueError(f"sampling.retrieved_k: {kind} is not trained with retrieved context (only text_to_image "
                         "and caption are)")


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
    no_retrieval(request.sampling, "visual_question")
    prompt = visual_question_prompt(engine, request)
    if engine.answers_worked:
        return worked_question(context, request, prompt, seed)
    params = fit_text_budget(engine, sampling_params(ANSWER_PARAMS, request.sampling, seed), prompt)
    [result] = decode(context, [GenerationRequest(prompt_ids=prompt, target="text", params=params)])
    text = shown_answer(text_answer(result.token_ids, engine.vocab), request.explain)
    return EngineResult(text=text, prompt_tokens=len(prompt), generated_tokens=len(result.token_ids), seed=seed)


def worked_question(context: RunContext, request: VisualQuestion, prompt: list[int], seed: int) -> EngineResult:
    """A model tuned with worked VQA answers: the description chosen among samples as captions are (the model's
    caption defaults), then the answer greedily (`cm3leon.tasks.worked`). A reasoning question's worked steps
    take the description's place (the evaluation measures this two-step decoding on VQA questions only)."""
    engine = context.engine
    params = fit_text_budget(engine, sampling_params(engine.defaults[CAPTION], request.sampling, seed), prompt)
    [answer] = answer_worked(
        engine.vocab, [prompt], params, [seed], lambda requests, scorer: decode(context, requests, scorer=scorer),
        DescriptionScorer(engine.model, engine.vocab),
    )
    text = shown_answer(answer.text, request.explain)
    return EngineResult(text=text, prompt_tokens=len(prompt), generated_tokens=answer.generated_tokens, seed=seed)


def shown_answer(answer: str, explain: bool) -> str:
    """A worked answer ("... so the answer is N") whole when `explain`, else only its N; other answers as is."""
    final = final_answer(answer)
    return answer if explain or final is None else final


def edit(context: RunContext, request: Edit) -> EngineResult:
    """Decoded as evaluated (`cm3leon.tasks.edit_check`): one direct sample, or with several the source is captioned
    into the expected scene, that scene is also redrawn (the model's EDIT_REDRAW defaults; the request's sampling
    options shape the direct samples only) and the retriever, else the caption check, keeps one of all."""
    engine, seed = context.engine, base_seed(request.sampling)
    no_retrieval(request.sampling, "edit")
    params = sampling_params(engine.defaults[EDIT], request.sampling, seed)
    scales = {
        "guidance_scale": request.text_guidance_scale,
        "image_guidance_scale": request.image_guidance_scale,
        "source_copy_bias": request.source_copy_bias,
    }
    params = params.replace(**{name: value for name, value in scales.items() if value is not None})
    source = image_codes(engine, request.image)  # encoded once: the prompt and the plan read it
    prompt = edit_prompt(engine, request, source)
    settings = replace(EditSettings.from_defaults(engine.defaults), direct=params)
    if not settings.chooses:
        return image_job(context, prompt, params)
    setup, retriever = task_setup(engine), engine.retriever
    with context.stage("edit_check", {"candidates": params.num_candidates, "retriever": retriever is not None}):
        plan = plan_edits(setup.checkpoint, [prompt], [source], [request.instruction.strip()], settings, 1)
    requests = [GenerationRequest(prompt_ids=prompt, target="image", params=params)]
    [redraw] = plan.redraw_prompts if request.redraw else [None]
    if redraw is not None:
        requests.append(GenerationRequest(prompt_ids=redraw, target="image", params=settings.redraw.replace(seed=seed)))
    results, images = generate_images(context, requests, edit_scorer(setup.checkpoint, plan, retriever))
    kept = 1 if redraw is not None and redraw_wins(results[0].score, results[1].score) else 0
    generated = sum(len(result.token_ids) for result in results)  # as `image_job` counts
    return EngineResult(images=[images[kept]], prompt_tokens=len(prompt), generated_tokens=generated, seed=seed)


def segmentation(context: RunContext, request: Segmentation) -> EngineResult:
    """images: [the colour-coded map in the legend's exact colours, the class-id map (grey level = legend index)];
    legend: (class, colour) by index; text: the share of the image of each class present. The map is decoded as
    evaluated: greedily, and redrawn where it disagrees with the model's caption of the image when the model's
    segmentation defaults say so (`cm3leon.tasks.segmentation`). Deterministic: no sampling options."""
    engine = context.engine
    codes = image_codes(engine, request.image)  # encoded once: the prompt and the caption check read it
    setup, prompt = task_setup(engine), segmentation_prompt(engine, request, codes)
    settings = SegmentationParams(maps=engine.defaults[SEGMENTATION], caption=engine.defaults[CAPTION])
    greedy = image_job(context, prompt, SEGMENTATION_PARAMS.replace(seed=SEGMENTATION_SEED))  # with previews
    world = setup.checkpoint.world
    decoder = MapDecoder(setup.checkpoint, [prompt], 1, SEGMENTATION_SEED, context.step, context.should_cancel)
    with context.stage("caption_check", {"enabled": settings.checks_caption}):
        run = check_maps(decoder, [codes], [segmentation_map(greedy.images[0], world)], settings)
    classes = run.maps[0]
    legend = list(segmentation_legend(world).items())
    counts = np.bincount(classes.ravel(), minlength=len(legend))[: len(legend)]
    shares = [f"{name}: {n / classes.size:.1%}" for (name, _), n in zip(legend, counts, strict=True) if n]
    return EngineResult(
        images=[colourise_segmentation(classes, world), np.repeat(classes[..., None], 3, axis=-1)],
        legend=legend, text="; ".join(shares), prompt_tokens=len(prompt),
        generated_tokens=greedy.generated_tokens + run.generated_tokens, seed=SEGMENTATION_SEED,
    )


def structure_guided(context: RunContext, request: StructureGuided) -> EngineResult:
    no_retrieval(request.sampling, "structure_guided")
    params = sampling_params(context.engine.defaults[STRUCTURE], request.sampling, base_seed(request.sampling))
    # The prompt ends with the caption: candidates are reranked against it, as for text->image.
    return image_job(context, structure_prompt(context.engine, request), params, context.engine.image_reranker)


def grounded_generation(context: RunContext, request: GroundedGeneration) -> EngineResult:
    no_retrieval(request.sampling, "grounded_generation")
    engine = context.engine
    params = sampling_params(engine.defaults[GROUNDED], request.sampling, base_seed(request.sampling))
    prompt, scorer = grounded_prompt(engine, request), None
    if params.num_candidates > 1 and engine.retriever is not None:
        # The scene asked for is known whole (cells from the boxes): its caption names positions, which the
        # prompt's words alone do not, so the retriever scores against it, as evaluated.
        setup = task_setup(engine)
        scene = grounded_spec_of(request, setup.world).scene
        fallback = LikelihoodScorer(engine.model, engine.vocab)
        scorer = expected_caption_scorer(setup.checkpoint, engine.retriever, [prompt], [scene], fallback)
    return image_job(context, prompt, params, scorer)


def text_rendering(context: RunContext, request: TextRendering) -> EngineResult:
    no_retrieval(request.sampling, "text_rendering")
    params = sampling_params(context.engine.defaults[TEXT_RENDER], request.sampling, base_seed(request.sampling))
    prompt, scorer = text_rendering_prompt(context.engine, request), None
    if params.num_candidates > 1:  # several samples: the retriever (else the model's reading) finds the word
        setup = task_setup(context.engine)
        word = text_scene_of(request.text, setup.world)
        scorer = text_render_scorer(setup.checkpoint, [prompt], [word], context.engine.retriever)
    return image_job(context, prompt, params, scorer)


def infill(context: RunContext, request: Infill) -> EngineResult:
    """Each region in turn is hidden behind CM3 sentinels and filled greedily (the evaluation's loop); the next
    region sees the completed codes. Decoding is greedy, so only the seed of `sampling` is accepted."""
    engine, sampling = context.engine, request.sampling
    no_retrieval(sampling, "infill")
    given = [name for name in SAMPLING_OPTIONS if getattr(sampling, name) is not None]
    if given:
        raise ValueError(f"sampling: infilling decodes greedily, only the seed may be set (got {', '.join(given)})")
    seed = base_seed(sampling)  # reported only: greedy decoding draws nothing
    setup, codes = task_setup(engine), image_codes(engine, request.image)
    prompts = [infill_prompt(engine, codes, request, i) for i in range(len(request.regions))]  # all checked first
    steps = [len(infill_plan(engine.vocab, lengths)) for _, lengths in prompts]
    total, done, prompt_tokens = sum(steps), 0, 0
    for index, count in enumerate(steps):
        prompt, lengths = infill_prompt(engine, codes, request, index)  # over the codes completed so far
        if len(prompt) + count > engine.model.config.max_seq_len:
            raise ValueError(f"text: the infill prompt ({len(prompt)} tokens) leaves no room for the region")

        def step(n: int, _total: int, offset: int = done) -> None:
            context.step(offset + n, total)

        with context.stage("decoding", {"requests": 1, "target": "infill", "region": index}):
            [output] = generate_infills(setup.checkpoint, [prompt], [lengths], 1, step, context.should_cancel)
        completed = infill_result(prompt, output, engine.vocab)
        if completed is None:  # the loop forces every sentinel, so this is a bug, not a bad input
            raise RuntimeError(f"infill output of region {index} did not reassemble into an image")
        codes, done, prompt_tokens = completed, done + count, prompt_tokens + len(prompt)
    image = decode_codes(setup.checkpoint, [codes])[0]
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
