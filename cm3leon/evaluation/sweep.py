"""The decoding sweep: which temperature and guidance scale to serve, chosen on the VALIDATION split.

Text->image: temperature x CFG scale (CM3Leon sweeps the scale 1..7; a = 1 is plain conditional sampling) x
guidance plausibility (0: plain CFG; > 0: guided sampling only among tokens the conditional stream finds
plausible, see SamplingParams.guidance_plausibility); then CD-K's k (the candidate set's reference rank: with a
confident expert, the k-th largest probability is tiny, so k > 1 lets in tokens that only the contrast between
the streams favours), whose
choice also sets the CD-K half of pooled decoding; the text guidance scale of editing (three streams, image scale
as the preset) x its source-copy bias (SamplingParams.source_copy_bias; 0 is off) and the CFG scale x candidates
of structure-guided generation (several candidates are reranked by the retriever given to the sweep, as
`eval all` and serving rerank them), and the candidates of grounded generation and of text rendering (both decode
with the text->image choice; several text-rendering candidates: the first the model reads back as the word asked
for, cm3leon.policies.shapes.caption_check);
captioning: temperature (0 = greedy) x candidates per image (several samples reranked by the noisy channel,
cm3leon.decoding.channel; greedy decoding has only one candidate to offer); segmentation: greedy maps alone, or
maps redrawn from (temperature, candidates) samples where the greedy one disagrees with the caption (decoded with
the sweep's caption choice; cm3leon.policies.shapes.segmentation), chosen by mIoU. Every setting decodes the same val
scenes with the same per-request seeds (common random numbers), so differences between settings are the settings',
not the sampler's luck. The best setting (highest exact-scene accuracy; ties by attribute accuracy, then BLEU for
captions, then the earlier setting) can be written as the checkpoint's decoding defaults, which the test-split
evaluations then use: choosing on val and reporting on test keeps the reported numbers honest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from cm3leon.bundle import ModelBundle
from cm3leon.data.oracle import Oracle
from cm3leon.data.world import Split
from cm3leon.decoding import SamplingParams, Scorer
from cm3leon.decoding.defaults import (
    CAPTION,
    EDIT,
    GROUNDED_GENERATION,
    SEGMENTATION,
    STRUCTURE_GUIDED,
    TEXT_RENDERING,
    TEXT_TO_IMAGE,
    preset_defaults,
)
from cm3leon.evaluation.caption_eval import run_captioning
from cm3leon.evaluation.decoder_setup import eval_scenes
from cm3leon.evaluation.image_tasks_eval import (
    evaluate_edits,
    evaluate_grounded,
    evaluate_seg2img,
    evaluate_segmentation,
    evaluate_text_render,
)
from cm3leon.evaluation.t2i_eval import prompt_captions, run_method
from cm3leon.evaluation.task_cases import TaskCases, TaskEvalConfig, build_cases
from cm3leon.presets import Presets
from cm3leon.retrieval.retriever import Retriever

CONTRASTIVE = "contrastive"  # the report's CD-K section (its choice is saved with the text->image defaults)
# Never the test split: the sweep chooses, the test split only reports.
SWEEP_SPLIT = Split.VAL


@dataclass(frozen=True)
class SweepConfig(Presets):
    """The grid. Presets: `standard` (the reported sweep) and `quick` (tests)."""

    n: int = 64
    batch_size: int = 16
    seed: int = 0
    temperatures: tuple[float, ...] = (0.7, 1.0)
    guidance_scales: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
    plausibilities: tuple[float, ...] = (0.0, 0.1)
    cdk_ks: tuple[int, ...] = (1, 5)
    edit_scales: tuple[float, ...] = (1.5, 3.0, 7.5)
    edit_copy_biases: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0)
    edit_candidates: tuple[int, ...] = (1, 8)  # at the best scale and bias; several: the caption check chooses
    structure_scales: tuple[float, ...] = (1.5, 2.0, 3.0)
    structure_candidates: tuple[int, ...] = (1, 8)  # several: reranked by the sweep's reranker
    grounded_candidates: tuple[int, ...] = (1, 8)  # at the chosen text->image setting; reranked likewise
    text_render_candidates: tuple[int, ...] = (1, 8, 16)  # at the chosen text->image setting; several: read back
    caption_temperatures: tuple[float, ...] = (0.0, 0.7, 1.0)
    caption_candidates: tuple[int, ...] = (1, 16)
    # Segmentation maps: (temperature, candidates) of the maps redrawn where the greedy one disagrees with the
    # caption; (0, 1) is greedy alone.
    segmentation_settings: tuple[tuple[float, int], ...] = ((0.0, 1), (0.7, 8), (1.0, 8), (0.7, 16))

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "standard": {},
        "quick": dict(
            n=3, batch_size=3, temperatures=(1.0,), guidance_scales=(1.0, 3.0), plausibilities=(0.0,),
            cdk_ks=(1,), edit_scales=(7.5,), edit_copy_biases=(0.0,), edit_candidates=(1,), structure_scales=(3.0,),
            caption_temperatures=(0.0,), caption_candidates=(1,), structure_candidates=(1,),
            grounded_candidates=(1,), text_render_candidates=(1,), segmentation_settings=((0.0, 1), (1.0, 2)),
        ),
    }

    def __post_init__(self) -> None:
        axes = (
            self.temperatures, self.guidance_scales, self.plausibilities, self.cdk_ks, self.edit_scales,
            self.edit_copy_biases, self.edit_candidates, self.structure_scales, self.structure_candidates,
            self.grounded_candidates, self.text_render_candidates, self.caption_temperatures, self.caption_candidates,
            self.segmentation_settings,
        )
        if not all(axes):
            raise ValueError("every sweep axis needs at least one value")


def sweep_cases(checkpoint: ModelBundle, config: SweepConfig) -> tuple[TaskEvalConfig, TaskCases]:
    """The instruction tasks' validation cases every image-task sweep decodes (the same for each setting)."""
    task_config = TaskEvalConfig(n=config.n, batch_size=config.batch_size, seed=config.seed)
    return task_config, build_cases(checkpoint, task_config, split=SWEEP_SPLIT)


def _best(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """The run with the highest values of `keys` in order; the first such run on a full tie."""
    return max(runs, key=lambda run: tuple(run[key] for key in keys))  # max keeps the first of equals


def _section(
    settings: Iterable[dict[str, Any]],
    measure: Callable[[dict[str, Any]], dict[str, Any]],
    metrics: tuple[str, ...],
    label: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """One sweep: each setting measured in turn; its runs (the setting, then `metrics`), a table of the first
    metric by `label(run)` and the best run by `metrics` in order (ties: the earlier, cheaper setting)."""
    runs = []
    for setting in settings:
        measured = measure(setting)
        runs.append({**setting, **{key: measured[key] for key in metrics}})
    return {metrics[0]: {label(run): run[metrics[0]] for run in runs}, "runs": runs, "best": _best(runs, metrics)}


def _candidates_label(run: dict[str, Any]) -> str:
    return f"candidates={run['num_candidates']}"


def _sampling_label(run: dict[str, Any]) -> str:
    return f"temperature={run['temperature']:g},candidates={run['num_candidates']}"


def sweep_text_to_image(
    checkpoint: ModelBundle, config: SweepConfig, base: SamplingParams
) -> dict[str, Any]:
    """CFG images for every (temperature, guidance scale, plausibility) on val scenes; a table of exact accuracies
    and the best. The table's cells are named `scale=a`, or `scale=a,plausibility=p` when that axis varies."""
    oracle = Oracle(checkpoint.world)
    scenes = eval_scenes(checkpoint.world, SWEEP_SPLIT, config.n, config.seed)
    captions = prompt_captions(scenes, checkpoint, config.seed)
    runs: list[dict[str, Any]] = []
    table: dict[str, dict[str, float]] = {}
    grid = [(t, a, p) for t in config.temperatures for a in config.guidance_scales for p in config.plausibilities]
    for temperature, scale, plausibility in grid:
        params = base.replace(
            method="cfg", temperature=temperature, guidance_scale=scale, guidance_plausibility=plausibility
        )
        metrics = run_method(checkpoint, oracle, scenes, captions, params, config.batch_size, config.seed).metrics
        runs.append(
            {
                "temperature": temperature,
                "guidance_scale": scale,
                "guidance_plausibility": plausibility,
                "exact_scene_accuracy": metrics["exact_scene_accuracy"],
                "attribute_accuracy": metrics["attribute_accuracy"],
                "images_per_s": metrics["images_per_s"],
            }
        )
        cell = f"scale={scale:g}" + (f",plausibility={plausibility:g}" if len(config.plausibilities) > 1 else "")
        table.setdefault(f"temperature={temperature:g}", {})[cell] = metrics["exact_scene_accuracy"]
    best = _best(runs, ("exact_scene_accuracy", "attribute_accuracy"))
    return {"exact_scene_accuracy": table, "runs": runs, "best": best}


def sweep_contrastive(checkpoint: ModelBundle, config: SweepConfig, base: SamplingParams) -> dict[str, Any]:
    """CD-K images for every k on val scenes (alpha and temperature as the preset says); the best k."""
    oracle = Oracle(checkpoint.world)
    scenes = eval_scenes(checkpoint.world, SWEEP_SPLIT, config.n, config.seed)
    captions = prompt_captions(scenes, checkpoint, config.seed)

    def measure(setting: dict[str, Any]) -> dict[str, Any]:
        params = base.replace(method="cdk", cdk_k=setting["cdk_k"])
        return run_method(checkpoint, oracle, scenes, captions, params, config.batch_size, config.seed).metrics

    settings = [{"cdk_k": k} for k in config.cdk_ks]
    return _section(settings, measure, ("exact_scene_accuracy", "attribute_accuracy"), lambda run: f"k={run['cdk_k']}")


def sweep_image_tasks(
    checkpoint: ModelBundle,
    config: SweepConfig,
    defaults: dict[str, SamplingParams],
    reranker: Scorer | None = None,
    retriever: Retriever | None = None,
) -> dict[str, dict[str, Any]]:
    """Editing's text guidance scale x source-copy bias, then the best of those with several candidates (chosen by
    `retriever`, else the caption check), and structure-guided generation's CFG scale x candidates (several are
    reranked by `reranker`), as `eval all` and serving do, on val cases; the best of each (exact target scenes;
    ties by unchanged objects kept, for edits)."""
    oracle = Oracle(checkpoint.world)
    task_config, cases = sweep_cases(checkpoint, config)
    edit_runs, structure_runs = [], []
    for scale in config.edit_scales:
        for bias in config.edit_copy_biases:
            params = defaults[EDIT].replace(guidance_scale=scale, source_copy_bias=bias)
            metrics = evaluate_edits(checkpoint, cases, task_config, oracle, params).metrics
            edit_runs.append({"guidance_scale": scale, "source_copy_bias": bias, "num_candidates": 1,
                              "exact_scene_accuracy": metrics["exact_scene_accuracy"],
                              "unchanged_preserved": metrics["unchanged_preserved"] or 0.0})
    best_edit = _best(edit_runs, ("exact_scene_accuracy", "unchanged_preserved"))
    for candidates in (count for count in config.edit_candidates if count > 1):
        params = defaults[EDIT].replace(guidance_scale=best_edit["guidance_scale"],
                                        source_copy_bias=best_edit["source_copy_bias"], num_candidates=candidates)
        metrics = evaluate_edits(checkpoint, cases, task_config, oracle, params, retriever).metrics
        edit_runs.append({**best_edit, "num_candidates": candidates,
                          "exact_scene_accuracy": metrics["exact_scene_accuracy"],
                          "unchanged_preserved": metrics["unchanged_preserved"] or 0.0})
    for scale in config.structure_scales:
        for candidates in config.structure_candidates:
            params = defaults[STRUCTURE_GUIDED].replace(guidance_scale=scale, num_candidates=candidates)
            metrics = evaluate_seg2img(checkpoint, cases, task_config, oracle, params, reranker).metrics
            structure_runs.append({"guidance_scale": scale, "num_candidates": candidates,
                                   "exact_scene_accuracy": metrics["exact_scene_accuracy"],
                                   "attribute_accuracy": metrics["attribute_accuracy"]})

    def cell(run: dict[str, Any]) -> str:
        is_edit = "source_copy_bias" in run
        axis = config.edit_candidates if is_edit else config.structure_candidates
        several = len(axis) > 1 and "num_candidates" in run
        copies = len(config.edit_copy_biases) > 1 and is_edit
        return (
            f"scale={run['guidance_scale']:g}"
            + (f",candidates={run['num_candidates']}" if several else "")
            + (f",copy={run['source_copy_bias']:g}" if copies else "")
        )

    def section(runs: list[dict[str, Any]], tie_break: str) -> dict[str, Any]:
        table = {cell(run): run["exact_scene_accuracy"] for run in runs}
        return {"exact_scene_accuracy": table, "runs": runs, "best": _best(runs, ("exact_scene_accuracy", tie_break))}

    return {
        EDIT: section(edit_runs, "unchanged_preserved"),
        STRUCTURE_GUIDED: section(structure_runs, "attribute_accuracy"),
    }


def sweep_grounded(
    checkpoint: ModelBundle, config: SweepConfig, t2i_params: SamplingParams, reranker: Scorer | None,
    retriever: Retriever | None = None,
) -> dict[str, Any]:
    """Grounded generation decodes as text->image does (`t2i_params`, the sweep's choice); here only its number of
    candidates (chosen by `retriever` against the asked-for scene's caption, else reranked by `reranker`, as
    `eval all` does) is chosen, on val cases."""
    oracle = Oracle(checkpoint.world)
    task_config, cases = sweep_cases(checkpoint, config)

    def measure(setting: dict[str, Any]) -> dict[str, Any]:
        params = t2i_params.replace(num_candidates=setting["num_candidates"])
        return evaluate_grounded(checkpoint, cases, task_config, oracle, params, reranker, retriever).metrics

    settings = [{"num_candidates": candidates} for candidates in config.grounded_candidates]
    return _section(settings, measure, ("exact_scene_accuracy", "box_iou"), _candidates_label)


def sweep_text_render(
    checkpoint: ModelBundle, config: SweepConfig, t2i_params: SamplingParams, retriever: Retriever | None = None
) -> dict[str, Any]:
    """Text rendering decodes as text->image does (`t2i_params`, the sweep's choice); here only its number of
    candidates (several: chosen by `retriever`, else the model's reading, as `eval all` does) is chosen, on val
    words."""
    oracle = Oracle(checkpoint.world)
    task_config, cases = sweep_cases(checkpoint, config)

    def measure(setting: dict[str, Any]) -> dict[str, Any]:
        params = t2i_params.replace(num_candidates=setting["num_candidates"])
        return evaluate_text_render(checkpoint, cases, task_config, oracle, params, retriever).metrics

    settings = [{"num_candidates": candidates} for candidates in config.text_render_candidates]
    return _section(settings, measure, ("exact_word_accuracy", "exact_scene_accuracy"), _candidates_label)


def sweep_segmentation(
    checkpoint: ModelBundle, config: SweepConfig, caption_params: SamplingParams
) -> dict[str, Any]:
    """mIoU of each segmentation setting on val cases (the caption check reads captions decoded with
    `caption_params`, the sweep's caption choice); ties go to the earlier, cheaper setting."""
    task_config, cases = sweep_cases(checkpoint, config)
    base = preset_defaults()[SEGMENTATION]

    def measure(setting: dict[str, Any]) -> dict[str, Any]:
        params = base.replace(**setting)
        return evaluate_segmentation(checkpoint, cases, task_config, params, caption_params).metrics

    settings = [{"temperature": t, "num_candidates": n} for t, n in config.segmentation_settings]
    return _section(settings, measure, ("miou", "pixel_accuracy"), _sampling_label)


def caption_settings(config: SweepConfig) -> list[tuple[float, int]]:
    """(temperature, candidates) pairs of the caption sweep; greedy decoding (0) is run with one candidate only,
    since all its candidates would be the same caption."""
    return [
        (temperature, candidates)
        for temperature in config.caption_temperatures
        for candidates in config.caption_candidates
        if temperature > 0 or candidates == 1
    ]


def sweep_captioning(checkpoint: ModelBundle, config: SweepConfig, base: SamplingParams) -> dict[str, Any]:
    """Captions of val images for every caption setting; exact accuracy and BLEU-4 per setting."""
    scenes = eval_scenes(checkpoint.world, SWEEP_SPLIT, config.n, config.seed)

    def measure(setting: dict[str, Any]) -> dict[str, Any]:
        params = base.replace(method="sample", **setting)
        return run_captioning(checkpoint, scenes, params, config.batch_size, config.seed)[1]

    settings = [{"temperature": t, "num_candidates": n} for t, n in caption_settings(config)]
    return _section(settings, measure, ("exact_scene_accuracy", "attribute_accuracy", "bleu4"), _sampling_label)


def run_sweep(
    checkpoint: ModelBundle, config: SweepConfig, reranker: Scorer | None = None,
    retriever: Retriever | None = None,
) -> dict[str, Any]:
    """Every sweep from the preset defaults (so a sweep never depends on an earlier sweep's choice); `reranker`
    chooses among several structure-guided candidates (None: the model's likelihood), `retriever` among several
    edits, rendered words or grounded scenes against the scene each should show (None: the model's own captions
    of them, and `reranker` for grounded scenes)."""
    base = preset_defaults()
    report: dict[str, Any] = {
        "split": SWEEP_SPLIT.value,
        "n": config.n,
        "seed": config.seed,
        TEXT_TO_IMAGE: sweep_text_to_image(checkpoint, config, base[TEXT_TO_IMAGE]),
        CONTRASTIVE: sweep_contrastive(checkpoint, config, base[TEXT_TO_IMAGE]),
        **sweep_image_tasks(checkpoint, config, base, reranker, retriever),
        CAPTION: sweep_captioning(checkpoint, config, base[CAPTION]),
    }
    chosen = best_defaults(report)
    report[GROUNDED_GENERATION] = sweep_grounded(checkpoint, config, chosen[TEXT_TO_IMAGE], reranker, retriever)
    report[TEXT_RENDERING] = sweep_text_render(checkpoint, config, chosen[TEXT_TO_IMAGE], retriever)
    report[SEGMENTATION] = sweep_segmentation(checkpoint, config, chosen[CAPTION])
    return report


def best_defaults(report: dict[str, Any]) -> dict[str, SamplingParams]:
    """The sweep's best settings laid over the presets: what `--write-defaults` saves."""
    base = preset_defaults()
    t2i_best, caption_best = report[TEXT_TO_IMAGE]["best"], report[CAPTION]["best"]
    defaults = {
        TEXT_TO_IMAGE: base[TEXT_TO_IMAGE].replace(
            method="cfg", temperature=t2i_best["temperature"], guidance_scale=t2i_best["guidance_scale"],
            guidance_plausibility=t2i_best.get("guidance_plausibility", 0.0),
            cdk_k=report[CONTRASTIVE]["best"]["cdk_k"] if CONTRASTIVE in report else base[TEXT_TO_IMAGE].cdk_k,
        ),
        CAPTION: base[CAPTION].replace(
            temperature=caption_best["temperature"], num_candidates=caption_best.get("num_candidates", 1)
        ),
        **{
            task: base[task].replace(
                guidance_scale=report[task]["best"]["guidance_scale"],
                num_candidates=report[task]["best"].get("num_candidates", 1),
                source_copy_bias=report[task]["best"].get("source_copy_bias", 0.0),
            )
            for task in (EDIT, STRUCTURE_GUIDED) if task in report
        },
    }
    # Grounded generation and text rendering: text->image's setting with their own candidate counts (the same
    # without their sections).
    grounded_candidates = report[GROUNDED_GENERATION]["best"]["num_candidates"] if GROUNDED_GENERATION in report else 1
    defaults[GROUNDED_GENERATION] = defaults[TEXT_TO_IMAGE].replace(num_candidates=grounded_candidates)
    text_render_candidates = report[TEXT_RENDERING]["best"]["num_candidates"] if TEXT_RENDERING in report else 1
    defaults[TEXT_RENDERING] = defaults[TEXT_TO_IMAGE].replace(num_candidates=text_render_candidates)
    if SEGMENTATION in report:
        best = report[SEGMENTATION]["best"]
        defaults[SEGMENTATION] = base[SEGMENTATION].replace(
            temperature=best["temperature"], num_candidates=best["num_candidates"]
        )
    return defaults
