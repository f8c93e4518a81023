"""Batch layout: requests x candidates x streams -> rows of one forward pass, grouped for sampling.

A *group* is one candidate of one request: it owns 1 to 3 rows (full / image-only / unconditional streams),
and the token it samples is written to all of them. Groups with fewer streams point their missing streams at
rows they have (sample: all three at the full row; two-stream CFG and CD-K: image-only = unconditional row), so
one mixing formula serves every group (see guidance.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from cm3leon.decoding.params import CandidateMethod, GenerationRequest
from cm3leon.decoding.prompts import PromptStreams, prompt_streams
from cm3leon.tokenizers.vocab import Vocabulary

SEED_BITS = 63


@dataclass(frozen=True)
class GroupSpec:
    request: int
    candidate: int
    method: CandidateMethod
    full_row: int
    image_only_row: int
    uncond_row: int
    max_new: int  # decode steps this group may take (an image target: its codes plus the closing <eos>)


@dataclass
class BatchPlan:
    rows: list[list[int]] = field(default_factory=list)  # prompt ids of each row
    row_group: list[int] = field(default_factory=list)
    groups: list[GroupSpec] = field(default_factory=list)
    request_groups: list[list[int]] = field(default_factory=list)  # per request, its groups in candidate order
    streams: list[PromptStreams] = field(default_factory=list)  # per request
    seeds: list[int] = field(default_factory=list)  # per request

    @property
    def num_steps(self) -> int:
        return max(group.max_new for group in self.groups)

    @property
    def prompt_length(self) -> int:
        return max(len(row) for row in self.rows)

    def _add_row(self, ids: list[int], group: int) -> int:
        self.rows.append(ids)
        self.row_group.append(group)
        return len(self.rows) - 1


def plan_batch(vocab: Vocabulary, requests: Sequence[GenerationRequest]) -> BatchPlan:
    if not requests:
        raise ValueError("no requests to generate")
    plan = BatchPlan()
    for request_index, request in enumerate(requests):
        params = request.params
        streams = prompt_streams(vocab, request)
        plan.streams.append(streams)
        plan.seeds.append(params.seed if params.seed is not None else secrets.randbits(SEED_BITS))
        max_new = vocab.codes_per_image + 1 if request.target == "image" else params.max_new_tokens
        group_indices = []
        for candidate, method in enumerate(params.candidate_methods()):
            group = len(plan.groups)
            full = plan._add_row(streams.full, group)
            if method == "sample":
                image_only = uncond = full
            elif method == "cfg" and params.uses_three_streams:
                image_only = plan._add_row(streams.text_masked, group)
                uncond = plan._add_row(streams.all_masked, group)
            else:  # two-stream CFG, and CD-K whose amateur is the text-masked stream
                image_only = uncond = plan._add_row(streams.text_masked, group)
            plan.groups.append(GroupSpec(request_index, candidate, method, full, image_only, uncond, max_new))
            group_indices.append(group)
        plan.request_groups.append(group_indices)
    return plan
