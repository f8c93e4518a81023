"""Evaluations of the image-writing instruction tasks, each judged against the world's exact ground truth.

editing (three-stream guidance; the checkpoint's edit defaults, the paper's image 1.5 / text 7.5 unless a sweep
chose others; several candidates: planned, pooled with redraws of the plan and chosen, `policies.shapes.edit_check`),
infilling
(CM3 sentinels, greedy codes), segmentation (greedy map, redrawn where it disagrees with the model's caption when
the checkpoint's segmentation defaults say so; decoded to classes by the legend), structure-guided generation (the
checkpoint's structure defaults, CFG 3 by the preset), grounded generation and text rendering (their own defaults,
text->image's unless a sweep chose a number of candidates; several text-rendering candidates: the first the model
reads back as the word asked for, `policies.shapes.caption_check`); `params` replaces a default (the sweep). Each
returns its metrics and its grid rows (inputs, output with the oracle's verdict, ground truth).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

import numpy as np

from cm3leon.bundle import ModelBundle
from cm3leon.data.grid import Tile
from cm3leon.data.language import parse_caption
from cm3leon.data.oracle import Oracle
from cm3leon.data.render import colourise_segmentation, object_box, render, segmentation_classes
from cm3leon.data.tasks import INFILL_EMPTY_CELL_PROBABILITY, grounded_spec_of_scene, masked_image
from cm3leon.decoding import LikelihoodScorer, SamplingParams, Scorer
from cm3leon.decoding.defaults import (
    CAPTION,
    GROUNDED_GENERATION,
    SEGMENTATION,
    STRUCTURE_GUIDED,
    TEXT_RENDERING,
    load_decoding_defaults,
    params_record,
)
from cm3leon.evaluation.scene_metrics import (
    letter_accuracy_by_slot,
    summarize_edits,
    summarize_predictions,
    verdict_label,
)
from cm3leon.evaluation.task_cases import TaskCases, TaskEvalConfig, formatter, mean
from cm3leon.policies.shapes.caption_check import CHECK_CAPTION_PARAMS, expected_caption_scorer, text_render_scorer
from cm3leon.policies.shapes.edit_check import EditSettings, sample_edits
from cm3leon.policies.shapes.segmentation import SegmentationParams, segment_images
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.decode import (
    caption_images,
    decode_codes,
    generate_infills,
    sample_image_outputs,
)
from cm3leon.tasks.infill import span_lengths
from cm3leon.tasks.parsing import infill_result, segmentation_map
from cm3leon.tokenizers.vocab import ImageCodes, Locations

PIXEL_MAX = 255.0
PSNR_CAP_DB = 100.0  # a perfect region (MSE 0) reports this instead of infinity (JSON has no infinity)


@dataclass
class TaskResult:
    metrics: dict[str, object]
    grid: list[list[Tile]] = field(default_factory=list)


def _rows(config: TaskEvalConfig, n: int) -> range:
    return range(min(config.grid_rows, n))


def _candidate_pixels(checkpoint: ModelBundle, candidates: list[list[ImageCodes | None]]) -> list[np.ndarray]:
    """Every candidate's pixels, one (K, H, W, 3) array per prompt, decoded through the VQ in one batch."""
    flat = [codes for per_prompt in candidates for codes in per_prompt]
    pixels = decode_codes(checkpoint, flat)
    bounds = np.cumsum([0] + [len(per_prompt) for per_prompt in candidates])
    return [pixels[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def evaluate_edits(
    checkpoint: ModelBundle, cases: TaskCases, config: TaskEvalConfig, oracle: Oracle,
    params: SamplingParams | None = None, retriever: Retriever | None = None, redraw: SamplingParams | None = None,
) -> TaskResult:
    """Exact target scenes and which half of an edit failed, decoded as the edit job decodes
    (`policies.shapes.edit_check.sample_edits`: with several candidates, planned, redrawn and chosen by `retriever`
    against the expected scene, else by the caption check). `params` replaces the direct samples' defaults, `redraw`
    the redraws'. Beside the kept edit: the direct samples' own choice, how often the plan was the target, how
    often a redraw was kept, and whether some candidate was exact (the oracle choosing)."""
    fmt, world = formatter(checkpoint), checkpoint.world
    settings = EditSettings.from_defaults(load_decoding_defaults(checkpoint.directory))
    settings = replace(settings, direct=params or settings.direct, redraw=redraw or settings.redraw)
    prompts = [fmt.edit(e, src, None).prompt for e, src in zip(cases.edits, cases.edit_sources, strict=True)]
    instructions = [case.instruction for case in cases.edits]
    samples = sample_edits(
        checkpoint, prompts, cases.edit_sources, instructions, settings, config.batch_size, config.seed, retriever
    )
    pixels = decode_codes(checkpoint, samples.chosen)
    predicted = [oracle.parse(p, expect_text=False) for p in pixels]
    metrics: dict[str, object] = {
        **summarize_edits(cases.edits, predicted, world),
        "decoding": params_record(settings.direct),
    }
    if samples.plan is not None:
        direct_only = [oracle.parse(p, expect_text=False) for p in decode_codes(checkpoint, samples.direct.chosen)]
        metrics.update({
            "chosen_by": chooser_name(retriever),
            "redraw_decoding": params_record(settings.redraw),
            "plan_exact": mean([e is not None and e.key() == case.target.key()
                                for e, case in zip(samples.plan.expected, cases.edits, strict=True)]),
            "redrawn": mean(samples.redrawn),
            "direct_exact": mean([s.key() == case.target.key() for s, case in zip(direct_only, cases.edits,
                                                                                  strict=True)]),
            # Whether the choice is the limit: how often some candidate is the exact target (the oracle choosing).
            "some_candidate_exact": _some_exact(checkpoint, oracle, cases, [
                direct + redraws for direct, redraws in zip(samples.direct.candidates, samples.redraws, strict=True)
            ]),
            "some_direct_candidate_exact": _some_exact(checkpoint, oracle, cases, samples.direct.candidates),
        })
    grid = [
        [
            (render(cases.edits[i].source, world).image, f"edit: {cases.edits[i].instruction}"),
            (pixels[i], verdict_label(predicted[i], cases.edits[i].target, world)
             + (" (redrawn)" if samples.redrawn[i] else "")),
            (render(cases.edits[i].target, world).image, "ground truth"),
        ]
        for i in _rows(config, len(predicted))
    ]
    return TaskResult(metrics, grid)


def _some_exact(
    checkpoint: ModelBundle, oracle: Oracle, cases: TaskCases, candidates: list[list[ImageCodes | None]]
) -> float:
    """How often some candidate of an edit is read as its exact target."""
    pixels = _candidate_pixels(checkpoint, candidates)
    return mean([
        any(oracle.parse(p, expect_text=False).key() == edit.target.key() for p in per_edit)
        for per_edit, edit in zip(pixels, cases.edits, strict=True)
    ])


def _psnr(mse: float) -> float:
    return PSNR_CAP_DB if mse <= 0 else min(PSNR_CAP_DB, 10 * math.log10(PIXEL_MAX**2 / mse))


def chooser_name(retriever: Retriever | None, otherwise: str = "caption check") -> str:
    """What chose among a task's candidates, for the report: the retriever against the scene the request should
    show, else `otherwise`."""
    return "retriever" if retriever is not None else otherwise


def evaluate_infill(
    checkpoint: ModelBundle, cases: TaskCases, config: TaskEvalConfig, oracle: Oracle
) -> TaskResult:
    """Each scene with one cell hidden (an occupied one, sometimes an empty one) and its caption as the text."""
    fmt, world, vocab = formatter(checkpoint), checkpoint.world, checkpoint.vocab
    rng = random.Random(f"{config.seed}:infill-cells")
    regions = []
    for scene in cases.scenes:
        empty = scene.empty_cells(world)
        use_empty = bool(empty) and rng.random() < INFILL_EMPTY_CELL_PROBABILITY
        regions.append(world.cell_box(rng.choice(empty) if use_empty else rng.choice(scene.objects).cell))
    examples = [
        fmt.infill(image, region, caption)
        for image, region, caption in zip(cases.images, regions, cases.captions, strict=True)
    ]
    lengths = [span_lengths(region, world.image_size, vocab) for region in regions]
    outputs = generate_infills(checkpoint, [e.prompt for e in examples], lengths, config.batch_size)
    completed = [infill_result(e.prompt, o, vocab) for e, o in zip(examples, outputs, strict=True)]
    pixels = decode_codes(checkpoint, completed)
    predicted = [oracle.parse(p, expect_text=False) for p in pixels]
    inside, outside = [], []
    for scene, region, image in zip(cases.scenes, regions, pixels, strict=True):
        error = (image.astype(np.float64) - render(scene, world).image.astype(np.float64)) ** 2
        x0, y0, x1, y1 = region
        hole = np.zeros(error.shape[:2], dtype=bool)
        hole[y0:y1, x0:x1] = True
        inside.append(float(error[hole].mean()))
        outside.append(float(error[~hole].mean()))
    metrics = summarize_predictions(cases.scenes, predicted)
    metrics["psnr_inside_db"] = _psnr(float(np.mean(inside)))
    metrics["psnr_outside_db"] = _psnr(float(np.mean(outside)))
    grid = [
        [
            (masked_image(render(cases.scenes[i], world).image, regions[i]), f"infill: {cases.captions[i]}"),
            (pixels[i], verdict_label(predicted[i], cases.scenes[i], world)),
            (render(cases.scenes[i], world).image, "ground truth"),
        ]
        for i in _rows(config, len(predicted))
    ]
    return TaskResult(metrics, grid)


def evaluate_segmentation(
    checkpoint: ModelBundle, cases: TaskCases, config: TaskEvalConfig, params: SamplingParams | None = None,
    caption_params: SamplingParams | None = None,
) -> TaskResult:
    """mIoU over the legend's classes (intersections and unions summed over all images), pixel accuracy, and
    the same for the greedy maps and for the VQ round trip of the true map (the ceiling the image tokenizer
    allows). Maps are decoded as served (`segment_images`, the checkpoint's segmentation and caption defaults)."""
    fmt, world = formatter(checkpoint), checkpoint.world
    defaults = load_decoding_defaults(checkpoint.directory)
    settings = SegmentationParams(maps=params or defaults[SEGMENTATION], caption=caption_params or defaults[CAPTION])
    prompts = [fmt.segmentation(image, None).prompt for image in cases.images]
    run = segment_images(checkpoint, prompts, cases.images, settings, config.batch_size, config.seed)
    truths = [render(scene, world).segmentation for scene in cases.scenes]
    ceiling = [segmentation_map(p, world) for p in decode_codes(checkpoint, cases.segmentations)]
    metrics: dict[str, object] = {"n": len(truths), **_miou(run.maps, truths, world)}
    metrics["greedy"] = _miou(run.greedy_maps, truths, world)
    if settings.checks_caption:
        checked = [agreed for agreed in run.agreed if agreed is not None]
        metrics["caption_check"] = {
            "readable_captions": len(checked) / len(truths),
            "resampled": mean(run.resampled),
            "agreeing_after": mean(checked) if checked else None,
        }
    metrics["vq_ceiling"] = _miou(ceiling, truths, world)
    metrics["decoding"] = params_record(settings.maps)
    grid = [
        [
            (render(cases.scenes[i], world).image, "input"),
            (
                colourise_segmentation(run.maps[i], world),
                f"predicted map{' (resampled)' if run.resampled[i] else ''}, pixel accuracy "
                f"{float((run.maps[i] == truths[i]).mean()):.3f}",
            ),
            (colourise_segmentation(truths[i], world), "ground truth"),
        ]
        for i in _rows(config, len(truths))
    ]
    return TaskResult(metrics, grid)


def _miou(predicted: list[np.ndarray], truths: list[np.ndarray], world: object) -> dict[str, object]:
    classes = segmentation_classes(world)  # type: ignore[arg-type]
    pred, true = np.stack(predicted), np.stack(truths)
    per_class = {}
    for index, name in enumerate(classes):
        union = int(((pred == index) | (true == index)).sum())
        if union:
            per_class[name] = int(((pred == index) & (true == index)).sum()) / union
    return {
        "miou": float(np.mean(list(per_class.values()))),
        "pixel_accuracy": float((pred == true).mean()),
        "iou_per_class": per_class,
    }


def evaluate_seg2img(
    checkpoint: ModelBundle, cases: TaskCases, config: TaskEvalConfig, oracle: Oracle,
    params: SamplingParams | None = None, reranker: Scorer | None = None,
) -> TaskResult:
    """Structure-guided generation; several candidates (the defaults' `num_candidates`) are reranked by `reranker`
    (the retriever against the prompt's caption, as serving does; None: the model's likelihood)."""
    fmt, world = formatter(checkpoint), checkpoint.world
    params = params or load_decoding_defaults(checkpoint.directory)[STRUCTURE_GUIDED]
    prompts = [
        fmt.seg2img(seg, caption, None).prompt for seg, caption in zip(cases.segmentations, cases.captions, strict=True)
    ]
    samples = sample_image_outputs(checkpoint, prompts, params, config.batch_size, config.seed, reranker)
    pixels = samples.pixels(checkpoint)
    predicted = [oracle.parse(p, expect_text=False) for p in pixels]
    metrics = summarize_predictions(cases.scenes, predicted)
    metrics["decoding"] = params_record(params)
    grid = [
        [
            (render(cases.scenes[i], world).segmentation_image, f"map + caption: {cases.captions[i]}"),
            (pixels[i], verdict_label(predicted[i], cases.scenes[i], world)),
            (render(cases.scenes[i], world).image, "ground truth"),
        ]
        for i in _rows(config, len(predicted))
    ]
    return TaskResult(metrics, grid)


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def evaluate_grounded(
    checkpoint: ModelBundle, cases: TaskCases, config: TaskEvalConfig, oracle: Oracle,
    params: SamplingParams | None = None, reranker: Scorer | None = None, retriever: Retriever | None = None,
) -> TaskResult:
    """Exact scene, and box IoU: each true object's box against the box of what the oracle found in its cell.
    Several candidates (the defaults' `num_candidates`) are chosen by `retriever` against the asked-for scene's
    caption, which names positions, as serving does; without one, reranked by `reranker` (None: the model's
    likelihood)."""
    fmt, world = formatter(checkpoint), checkpoint.world
    params = params or load_decoding_defaults(checkpoint.directory)[GROUNDED_GENERATION]
    specs = [grounded_spec_of_scene(s, world) for s in cases.scenes]
    prompts = [fmt.grounded(spec, None).prompt for spec in specs]
    if retriever is not None and params.num_candidates > 1:
        fallback = reranker or LikelihoodScorer(checkpoint.model, checkpoint.vocab)
        reranker = expected_caption_scorer(checkpoint, retriever, prompts, cases.scenes, fallback)
    samples = sample_image_outputs(checkpoint, prompts, params, config.batch_size, config.seed, reranker)
    pixels = samples.pixels(checkpoint)
    predicted = [oracle.parse(p, expect_text=False) for p in pixels]
    ious = []
    for truth, scene in zip(cases.scenes, predicted, strict=True):
        for obj in truth.objects:
            found = scene.object_at(obj.cell)
            ious.append(_box_iou(object_box(obj, world), object_box(found, world)) if found else 0.0)
    metrics = summarize_predictions(cases.scenes, predicted)
    metrics["box_iou"] = mean(ious)
    metrics["decoding"] = params_record(params)
    if params.num_candidates > 1:
        metrics["chosen_by"] = chooser_name(retriever, otherwise="reranker")
    grid = [
        [
            (pixels[i], f"{_grounded_label(checkpoint, prompts[i])}\n"
                        f"{verdict_label(predicted[i], cases.scenes[i], world)}"),
            (render(cases.scenes[i], world).image, "ground truth"),
        ]
        for i in _rows(config, len(predicted))
    ]
    return TaskResult(metrics, grid)


def _grounded_label(checkpoint: ModelBundle, prompt: list[int]) -> str:
    """The grounded prompt as text with each box written out ("... circle [0 0 4 5] ...")."""
    parts = checkpoint.vocab.decode_document(prompt)
    return "".join(f" [{' '.join(map(str, p.bins))}]" if isinstance(p, Locations) else str(p) for p in parts)


def evaluate_text_render(
    checkpoint: ModelBundle, cases: TaskCases, config: TaskEvalConfig, oracle: Oracle,
    params: SamplingParams | None = None, retriever: Retriever | None = None,
) -> TaskResult:
    """Exact words (and scenes: colour and background too) read by the oracle from the rendered images, how often
    each letter slot was drawn right (`letter_accuracy_by_slot`); and `reading_exact`, how often the model's own
    greedy caption of the true word image names its scene exactly, which bounds what the model's reading check
    among several candidates can find; with several candidates, `some_candidate_exact_word`, how often one of them
    draws the word (what a perfect choice would reach). Several candidates are chosen by `retriever` against the
    asked-for word scene, else by the model's reading of them (`policies.shapes.caption_check`), as serving does."""
    fmt, world = formatter(checkpoint), checkpoint.world
    params = params or load_decoding_defaults(checkpoint.directory)[TEXT_RENDERING]
    prompts = [fmt.text_render(scene, None).prompt for scene in cases.words]
    several = params.num_candidates > 1
    scorer = text_render_scorer(checkpoint, prompts, cases.words, retriever) if several else None
    samples = sample_image_outputs(checkpoint, prompts, params, config.batch_size, config.seed, scorer)
    pixels = samples.pixels(checkpoint)
    predicted = [oracle.parse(p, expect_text=True) for p in pixels]
    words = [p.word == t.word for p, t in zip(predicted, cases.words, strict=True)]
    exact = [p.key() == t.key() for p, t in zip(predicted, cases.words, strict=True)]
    readings, _ = caption_images(checkpoint, cases.word_images, CHECK_CAPTION_PARAMS, config.batch_size, config.seed)
    read = [parse_caption(text, world) for text in readings]
    metrics: dict[str, object] = {
        "n": len(words), "exact_word_accuracy": mean(words), "exact_scene_accuracy": mean(exact),
        "reading_exact": mean([r is not None and r.key() == t.key() for r, t in zip(read, cases.words, strict=True)]),
        "letter_accuracy_by_slot": letter_accuracy_by_slot(
            [t.word or "" for t in cases.words], [p.word for p in predicted]
        ),
        "decoding": params_record(params),
    }
    if several:
        metrics["chosen_by"] = chooser_name(retriever)
        # Whether the choice is the limit: how often some candidate draws the word (the oracle choosing).
        metrics["some_candidate_exact_word"] = mean([
            any(oracle.parse(p, expect_text=True).word == word.word for p in candidates)
            for candidates, word in zip(_candidate_pixels(checkpoint, samples.candidates), cases.words, strict=True)
        ])
    grid = [
        [
            (pixels[i], f"{checkpoint.vocab.decode_text(prompts[i])}\nread: {predicted[i].word or '(nothing)'}"),
            (render(cases.words[i], world).image, "ground truth"),
        ]
        for i in _rows(config, len(words))
    ]
    return TaskResult(metrics, grid)
