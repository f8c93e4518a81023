"""One decode step for every group of a batch: mix streams -> plausibility -> constrain -> CD-K -> copy prior ->
warp -> select -> stop.

Built once per `generate` call from the batch plan; every per-request parameter is a (G,) tensor, so a step is
a fixed sequence of tensor operations with no host-device synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cm3leon.decoding.contrastive import cdk_candidates, cdk_scores
from cm3leon.decoding.guidance import StreamMixer
from cm3leon.decoding.params import GenerationRequest
from cm3leon.decoding.plan import BatchPlan
from cm3leon.decoding.processors import (
    NEG_INF,
    ModalityConstraint,
    SourceCopyPrior,
    StopCriteria,
    Temperature,
    TopK,
    TopP,
)
from cm3leon.decoding.prompts import last_image_ids
from cm3leon.decoding.selector import TokenSelector, draw_uniforms
from cm3leon.tokenizers.vocab import Vocabulary


@dataclass
class StepPipeline:
    mixer: StreamMixer
    constraint: ModalityConstraint
    is_cdk: torch.Tensor  # (G,) bool
    any_cdk: bool  # host-side: skip the CD-K work when no group uses it
    guide_text: torch.Tensor  # (G,) bool: guidance (CFG or CD-K) also at text positions
    cdk_alphas: torch.Tensor
    cdk_ks: torch.Tensor
    plausibility: torch.Tensor  # (G,) guidance_plausibility; 0 keeps every allowed token
    any_plausibility: bool  # host-side: skip the mask when no group uses it
    copy_prior: SourceCopyPrior | None  # None when no group asked for a source_copy_bias
    temperature: Temperature
    top_k: TopK
    top_p: TopP
    selector: TokenSelector
    stop: StopCriteria

    def next_tokens(self, logits: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
        """logits (R, V) float of every row's last position -> (G,) next token per group; `step` is shared (int)
        or per group (G,)."""
        full, image_only, uncond = self.mixer.streams(logits)
        allowed = self.constraint.allowed()
        guided = self.mixer(logits)
        if self.any_plausibility:
            log_cond = full.masked_fill(~allowed, NEG_INF).log_softmax(dim=-1)
            guided = guided.masked_fill(~cdk_candidates(log_cond, self.plausibility, 1), NEG_INF)
        if self.any_cdk:
            log_expert = full.masked_fill(~allowed, NEG_INF).log_softmax(dim=-1)
            log_amateur = uncond.masked_fill(~allowed, NEG_INF).log_softmax(dim=-1)
            contrastive = cdk_scores(log_expert, log_amateur, self.cdk_alphas, self.cdk_ks)
            guided = torch.where(self.is_cdk.unsqueeze(1), contrastive, guided)
        in_image = self.constraint.in_image_block()
        guide_now = (self.guide_text | in_image).unsqueeze(1)
        scores = torch.where(guide_now, guided, full).masked_fill(~allowed, NEG_INF)
        if self.copy_prior is not None:
            scores = self.copy_prior(scores, self.constraint.codes_written, in_image)
        probs = self.top_p(self.top_k(self.temperature(scores))).softmax(dim=-1)
        tokens = self.stop.apply(self.selector(probs, step), step)
        self.constraint.update(tokens)
        return tokens


def build_pipeline(
    vocab: Vocabulary, plan: BatchPlan, requests: Sequence[GenerationRequest], device: torch.device
) -> StepPipeline:
    groups = plan.groups
    params = [requests[group.request].params for group in groups]
    is_cdk = [group.method == "cdk" for group in groups]

    def tensor(values: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    # Each request's generator draws its own (candidates, steps) uniforms; groups take their candidate's row.
    uniforms = torch.zeros((len(groups), plan.num_steps), dtype=torch.float64)
    for request_index, group_indices in enumerate(plan.request_groups):
        steps = groups[group_indices[0]].max_new
        uniforms[group_indices, :steps] = draw_uniforms(plan.seeds[request_index], len(group_indices), steps)

    copy_prior = _copy_prior(vocab, plan, requests, device) if any(p.source_copy_bias > 0 for p in params) else None
    mixer = StreamMixer(
        full_rows=tensor([g.full_row for g in groups], torch.long),
        image_only_rows=tensor([g.image_only_row for g in groups], torch.long),
        uncond_rows=tensor([g.uncond_row for g in groups], torch.long),
        text_scales=tensor([p.guidance_scale for p in params], torch.float32),
        # Unused (image-only row = uncond row) unless three streams; 1.0 keeps the formula plain.
        image_scales=tensor([p.image_guidance_scale or 1.0 for p in params], torch.float32),
    )
    return StepPipeline(
        mixer=mixer,
        constraint=ModalityConstraint(
            vocab, tensor([requests[g.request].target == "image" for g in groups], torch.bool)
        ),
        is_cdk=tensor(is_cdk, torch.bool),
        any_cdk=any(is_cdk),
        guide_text=tensor([p.guide_text_tokens for p in params], torch.bool),
        cdk_alphas=tensor([p.cdk_alpha for p in params], torch.float32),
        cdk_ks=tensor([p.cdk_k for p in params], torch.long),
        plausibility=tensor([p.guidance_plausibility for p in params], torch.float32),
        any_plausibility=any(p.guidance_plausibility > 0 for p in params),
        copy_prior=copy_prior,
        temperature=Temperature(tensor([p.temperature for p in params], torch.float32)),
        # CD-K has its own truncation (the candidate set); top-k / top-p apply to the other groups only.
        top_k=TopK(tensor([0 if cdk else p.top_k for p, cdk in zip(params, is_cdk, strict=True)], torch.long)),
        top_p=TopP(tensor([1.0 if cdk else p.top_p for p, cdk in zip(params, is_cdk, strict=True)], torch.float32)),
        selector=TokenSelector(uniforms.to(device), tensor([p.temperature == 0 for p in params], torch.bool)),
        stop=StopCriteria(vocab, tensor([g.max_new for g in groups], torch.long)),
    )


def _copy_prior(
    vocab: Vocabulary, plan: BatchPlan, requests: Sequence[GenerationRequest], device: torch.device
) -> SourceCopyPrior:
    """Each group's reference codes: its request's last prompt image (requests without a bias point anywhere)."""
    references, biases = [], []
    for group in plan.groups:
        request = requests[group.request]
        bias = request.params.source_copy_bias if request.target == "image" else 0.0
        reference = last_image_ids(vocab, plan.streams[group.request].full) if bias > 0 else None
        if bias > 0 and reference is None:
            raise ValueError("source_copy_bias needs a prompt holding an image to copy from (editing's source)")
        references.append(reference or [vocab.image_ids.start] * vocab.codes_per_image)
        biases.append(bias)
    reference_ids = torch.tensor(references, dtype=torch.long, device=device)
    return SourceCopyPrior(reference_ids, torch.tensor(biases, dtype=torch.float32, device=device))
