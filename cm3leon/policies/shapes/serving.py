"""The shapes world's serving policies: how the shapes model serves four kinds beyond the generic path.

    shapes.edit_redraw         several edit samples: the source is captioned into the expected scene, that scene is
                               redrawn from a grounded prompt too, and the retriever (else the caption check) keeps
                               one of all (`edit_check`)
    shapes.caption_check       a greedy segmentation map is redrawn where it disagrees with the model's caption of
                               the image (`segmentation`)
    shapes.scene_caption       grounded candidates are chosen by the retriever against the caption of the scene
                               the boxes ask for (`caption_check.expected_caption_scorer`)
    shapes.word_choice         rendered-word candidates are chosen by the model's reading plus the retriever's
                               similarity to the word scene (`caption_check.text_render_scorer`)

Each reads the world's grammar (captions, cells, words), which is why it is a policy the model names and not the
engine's default; a model without the world that names one is refused (UNIMPLEMENTED) before anything decodes.
Every stage reports progress and honours cancellation like any decode.
"""

from __future__ import annotations

from dataclasses import replace

from cm3leon.decoding import GenerationRequest, LikelihoodScorer
from cm3leon.decoding.defaults import CAPTION, GROUNDED_GENERATION, SEGMENTATION, TEXT_RENDERING
from cm3leon.inference.policies import policy
from cm3leon.inference.running import RunContext, base_seed, default_params, generate_images
from cm3leon.inference.task_handlers import SEGMENTATION_SEED, edit_params, image_job
from cm3leon.inference.task_handlers import grounded_generation as plain_grounded_generation
from cm3leon.inference.task_handlers import text_rendering as plain_text_rendering
from cm3leon.inference.task_prompts import (
    edit_prompt,
    grounded_prompt,
    image_codes,
    segmentation_prompt,
    text_rendering_prompt,
)
from cm3leon.kinds import Edit, GroundedGeneration, Segmentation, TextRendering
from cm3leon.policies.shapes.caption_check import expected_caption_scorer, text_render_scorer
from cm3leon.policies.shapes.edit_check import EditSettings, edit_scorer, plan_edits, redraw_wins
from cm3leon.policies.shapes.inputs import classes_result, grounded_spec_of, text_scene_of, world_of
from cm3leon.policies.shapes.segmentation import MapDecoder, SegmentationParams, check_maps
from cm3leon.requests import EngineResult
from cm3leon.tasks.decode import SEGMENTATION_PARAMS
from cm3leon.tasks.parsing import segmentation_map


@policy("shapes.edit_redraw", kind="edit")
def edit_redraw(context: RunContext, request: Edit) -> EngineResult:
    """One direct sample as the generic path; with several, planned, redrawn and chosen (`edit_check`). The request's
    sampling options shape the direct samples only; the redraws take the model's `edit_redraw` defaults."""
    engine, bundle, seed = context.engine, context.bundle, base_seed(request.sampling)
    world_of(bundle, "edit")  # refused up front on a model without the world
    params = edit_params(context, request, seed)
    source = image_codes(engine, request.image)  # encoded once: the prompt and the plan read it
    prompt = edit_prompt(engine, request, source)
    settings = replace(EditSettings.from_defaults(bundle.defaults), direct=params)
    if not settings.chooses:
        return image_job(context, prompt, params)
    with context.stage("edit_check", {"candidates": params.num_candidates, "retriever": bundle.retriever is not None}):
        plan = plan_edits(bundle, [prompt], [source], [request.instruction.strip()], settings, 1)
    requests = [GenerationRequest(prompt_ids=prompt, target="image", params=params)]
    [redraw] = plan.redraw_prompts
    if redraw is not None:
        requests.append(GenerationRequest(prompt_ids=redraw, target="image", params=settings.redraw.replace(seed=seed)))
    results, images = generate_images(context, requests, edit_scorer(bundle, plan, bundle.retriever))
    kept = 1 if redraw is not None and redraw_wins(results[0].score, results[1].score) else 0
    generated = sum(len(result.token_ids) for result in results)  # as `image_job` counts
    return EngineResult(images=[images[kept]], prompt_tokens=len(prompt), generated_tokens=generated, seed=seed)


@policy("shapes.caption_check", kind="segmentation")
def caption_checked_segmentation(context: RunContext, request: Segmentation) -> EngineResult:
    """The greedy map, redrawn where it disagrees with the model's caption of the image when the model's
    segmentation defaults ask for several samples (`segmentation.check_maps`). Deterministic."""
    engine, bundle = context.engine, context.bundle
    world = world_of(bundle, "segmentation")
    codes = image_codes(engine, request.image)  # encoded once: the prompt and the caption check read it
    prompt = segmentation_prompt(engine, request, codes)
    settings = SegmentationParams(maps=bundle.defaults[SEGMENTATION], caption=bundle.defaults[CAPTION])
    greedy = image_job(context, prompt, SEGMENTATION_PARAMS.replace(seed=SEGMENTATION_SEED))  # with previews
    decoder = MapDecoder(bundle, [prompt], 1, SEGMENTATION_SEED, context.step, context.should_cancel)
    with context.stage("caption_check", {"enabled": settings.checks_caption}):
        run = check_maps(decoder, [codes], [segmentation_map(greedy.images[0], world)], settings)
    drawn = replace(greedy, generated_tokens=greedy.generated_tokens + run.generated_tokens)
    return classes_result(run.maps[0], world, drawn)


@policy("shapes.scene_caption", kind="grounded_generation")
def scene_caption_grounded(context: RunContext, request: GroundedGeneration) -> EngineResult:
    """Several candidates with a retriever: scored against the caption of the scene the boxes ask for (cells from
    the boxes), which names positions as the prompt's words alone do not. Otherwise the generic path."""
    engine, bundle = context.engine, context.bundle
    world = world_of(bundle, "grounded_generation")
    params = default_params(context, GROUNDED_GENERATION, request.sampling)
    if params.num_candidates == 1 or bundle.retriever is None:
        return plain_grounded_generation(context, request)
    prompt = grounded_prompt(engine, request)
    scene = grounded_spec_of(request, world).scene
    fallback = LikelihoodScorer(bundle.model, bundle.vocab)
    return image_job(
        context, prompt, params, expected_caption_scorer(bundle, bundle.retriever, [prompt], [scene], fallback)
    )


@policy("shapes.word_choice", kind="text_rendering")
def word_choice(context: RunContext, request: TextRendering) -> EngineResult:
    """Several samples: the retriever with the model's reading (else the reading alone) finds the word asked for.
    One sample: the generic path."""
    engine, bundle = context.engine, context.bundle
    world = world_of(bundle, "text_rendering")
    params = default_params(context, TEXT_RENDERING, request.sampling)
    if params.num_candidates == 1:
        return plain_text_rendering(context, request)
    prompt = text_rendering_prompt(engine, request)
    word = text_scene_of(request.text, world)
    return image_job(context, prompt, params, text_render_scorer(bundle, [prompt], [word], bundle.retriever))
