"""Scoring continuations and reranking candidates.

CM3Leon pools candidates (half TopP+CFG, half CD-K) and keeps the one a CLIP model scores best. The scorer is
pluggable (`Scorer`); the default here is the decoder's own conditional log-likelihood of the candidate given
the full prompt, which needs no other model. A retriever's text-image similarity can replace it later.
`no_rerank` scores nothing, for requests of one candidate each (no likelihood pass to choose).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from cm3leon.decoding.params import DEFAULT_SCORING_BATCH_SIZE, GenerationRequest
from cm3leon.tokenizers.vocab import Vocabulary


class Scorer(Protocol):
    def __call__(
        self, request: GenerationRequest, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]
    ) -> Sequence[float]:
        """One score per candidate (higher is better); `prompt_ids` is the conditional stream's prompt."""
        ...


@torch.inference_mode()
def continuation_log_likelihoods(
    model: nn.Module,
    vocab: Vocabulary,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    batch_size: int = DEFAULT_SCORING_BATCH_SIZE,
) -> torch.Tensor:
    """(N,) float32 on the CPU: sum over each continuation's tokens of log p(token | prompt, earlier tokens).

    Rows are right-padded with `<pad>`: causal attention means padding after a sequence never changes it.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if any(not prompt for prompt in prompts):
        raise ValueError("every prompt needs at least one token (e.g. <bos>) to predict the continuation from")
    device = next(model.parameters()).device
    totals: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        batch_prompts = prompts[start : start + batch_size]
        batch_continuations = continuations[start : start + batch_size]
        sequences = [list(p) + list(c) for p, c in zip(batch_prompts, batch_continuations, strict=True)]
        length = max(len(sequence) for sequence in sequences)
        tokens = torch.full((len(sequences), length), vocab.pad_id, dtype=torch.long)
        # Which targets count: token t+1 of the continuation is predicted at position t.
        target_mask = torch.zeros((len(sequences), length - 1), dtype=torch.bool)
        for row, (prompt, sequence) in enumerate(zip(batch_prompts, sequences, strict=True)):
            tokens[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            target_mask[row, len(prompt) - 1 : len(sequence) - 1] = True
        tokens, target_mask = tokens.to(device), target_mask.to(device)
        log_probs = model(tokens[:, :-1]).float().log_softmax(dim=-1)
        token_log_probs = log_probs.gather(2, tokens[:, 1:].unsqueeze(2)).squeeze(2)
        totals.append((token_log_probs * target_mask).sum(dim=1).cpu())
    return torch.cat(totals)


def score_continuation(
    model: nn.Module, vocab: Vocabulary, prompt_ids: Sequence[int], continuation_ids: Sequence[int]
) -> float:
    """log p(continuation | prompt) of one pair."""
    return float(continuation_log_likelihoods(model, vocab, [prompt_ids], [continuation_ids])[0])


@dataclass(eq=False)
class ModelScorer:
    """The base of the scorers that read the decoder itself: its log-likelihoods of continuations, `batch_size`
    rows a forward. Subclasses say which continuations they read and how those become scores."""

    model: nn.Module
    vocab: Vocabulary
    batch_size: int = field(default=DEFAULT_SCORING_BATCH_SIZE, kw_only=True)

    def log_likelihoods(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> torch.Tensor:
        """log p(continuation | prompt) of each pair (`continuation_log_likelihoods` at this scorer's batch size)."""
        return continuation_log_likelihoods(self.model, self.vocab, prompts, continuations, batch_size=self.batch_size)


@dataclass(eq=False)
class LikelihoodScorer(ModelScorer):
    """The model's conditional log-likelihood of each candidate given the prompt (optionally per token)."""

    per_token: bool = field(default=False, kw_only=True)

    def __call__(
        self, request: GenerationRequest, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]
    ) -> list[float]:
        totals = self.log_likelihoods([prompt_ids] * len(candidates), candidates)
        if self.per_token:
            lengths = torch.tensor([max(len(candidate), 1) for candidate in candidates], dtype=totals.dtype)
            totals = totals / lengths
        return totals.tolist()


def no_rerank(
    request: GenerationRequest, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]
) -> list[float]:
    """A Scorer for single-candidate requests: there is nothing to choose, so skip the likelihood pass."""
    return [0.0] * len(candidates)


class WeightedSum:
    """Several scorers' scores added with positive weights: two views of a candidate (the model's reading of it, a
    retriever's similarity) combined into one ranking."""

    def __init__(self, parts: Sequence[tuple[float, Scorer]]) -> None:
        if not parts or any(weight <= 0 for weight, _ in parts):
            raise ValueError("WeightedSum needs at least one scorer, each with a positive weight")
        self.parts = tuple(parts)

    def __call__(
        self, request: GenerationRequest, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]
    ) -> list[float]:
        totals = [0.0] * len(candidates)
        for weight, scorer in self.parts:
            scores = scorer(request, prompt_ids, candidates)
            totals = [total + weight * float(score) for total, score in zip(totals, scores, strict=True)]
        return totals


def best_candidate(scores: Sequence[float]) -> int:
    """Index of the highest score (the first on ties)."""
    if not scores:
        raise ValueError("no candidates to rerank")
    return max(range(len(scores)), key=lambda index: scores[index])
