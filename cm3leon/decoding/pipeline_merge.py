"""Joining the step pipelines of separately planned requests into one, and handing their state back.

The scheduler plans every request alone (`plan_batch([request])`, the same plan `generate` makes for it) and
decodes all running requests in one step: their pipelines' per-group tensors are concatenated, with each
request's stream rows renumbered to the cache rows it holds. Every operation of a step is row-wise, so a group's
tokens do not depend on which other groups share the merged pipeline.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from cm3leon.decoding.guidance import StreamMixer
from cm3leon.decoding.pipeline import StepPipeline
from cm3leon.decoding.processors import SourceCopyPrior, TopK, TopP
from cm3leon.decoding.selector import TokenSelector


def merge_pipelines(pipelines: Sequence[StepPipeline], row_maps: Sequence[torch.Tensor]) -> StepPipeline:
    """One pipeline over all groups of `pipelines`; `row_maps[i]` maps pipeline i's rows to cache rows."""
    first = pipelines[0]

    def cat(get: object) -> torch.Tensor:
        return torch.cat([get(p) for p in pipelines])  # type: ignore[operator]

    mixer = StreamMixer(
        full_rows=torch.cat([rows[p.mixer.full_rows] for p, rows in zip(pipelines, row_maps, strict=True)]),
        image_only_rows=torch.cat([rows[p.mixer.image_only_rows] for p, rows in zip(pipelines, row_maps, strict=True)]),
        uncond_rows=torch.cat([rows[p.mixer.uncond_rows] for p, rows in zip(pipelines, row_maps, strict=True)]),
        text_scales=cat(lambda p: p.mixer.text_scales),
        image_scales=cat(lambda p: p.mixer.image_scales),
    )
    constraint = copy.copy(first.constraint)
    constraint.image_target = cat(lambda p: p.constraint.image_target)
    constraint.codes_written = cat(lambda p: p.constraint.codes_written)
    stop = copy.copy(first.stop)
    stop.max_new = cat(lambda p: p.stop.max_new)
    stop.finished = cat(lambda p: p.stop.finished)
    temperature = copy.copy(first.temperature)
    temperature.divisor = cat(lambda p: p.temperature.divisor)
    width = max(p.selector.uniforms.shape[1] for p in pipelines)
    uniforms = torch.cat([_pad_columns(p.selector.uniforms, width) for p in pipelines])
    return StepPipeline(
        mixer=mixer,
        constraint=constraint,
        is_cdk=cat(lambda p: p.is_cdk),
        any_cdk=any(p.any_cdk for p in pipelines),
        guide_text=cat(lambda p: p.guide_text),
        cdk_alphas=cat(lambda p: p.cdk_alphas),
        cdk_ks=cat(lambda p: p.cdk_ks),
        plausibility=cat(lambda p: p.plausibility),
        any_plausibility=any(p.any_plausibility for p in pipelines),
        copy_prior=_merge_copy_priors(pipelines),
        temperature=temperature,
        top_k=TopK(cat(lambda p: p.top_k.ks)),
        top_p=TopP(cat(lambda p: p.top_p.ps)),
        selector=TokenSelector(uniforms, cat(lambda p: p.selector.greedy)),
        stop=stop,
    )


def hand_back_state(merged: StepPipeline, pipelines: Sequence[StepPipeline]) -> None:
    """Copy the merged pipeline's per-group decoding state (codes written, finished) back into its parts."""
    start = 0
    for pipeline in pipelines:
        end = start + pipeline.stop.finished.shape[0]
        pipeline.constraint.codes_written = merged.constraint.codes_written[start:end].clone()
        pipeline.stop.finished = merged.stop.finished[start:end].clone()
        start = end


def _pad_columns(uniforms: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - uniforms.shape[1]
    return uniforms if not missing else torch.cat([uniforms, uniforms.new_zeros((uniforms.shape[0], missing))], 1)


def _merge_copy_priors(pipelines: Sequence[StepPipeline]) -> SourceCopyPrior | None:
    """Groups without a prior get a zero bias (adding 0 leaves their scores exactly as they were)."""
    priors = [p.copy_prior for p in pipelines]
    template = next((prior for prior in priors if prior is not None), None)
    if template is None:
        return None
    codes = template.reference_ids.shape[1]
    references, biases = [], []
    for pipeline, prior in zip(pipelines, priors, strict=True):
        groups = pipeline.stop.finished.shape[0]
        if prior is None:
            references.append(template.reference_ids.new_full((groups, codes), int(template.reference_ids.min())))
            biases.append(template.biases.new_zeros(groups))
        else:
            references.append(prior.reference_ids)
            biases.append(prior.biases)
    return SourceCopyPrior(torch.cat(references), torch.cat(biases))
