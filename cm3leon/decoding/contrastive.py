"""Contrastive decoding CD-K (CM3Leon), with the unconditional stream as the amateur.

    V = {t : p_exp(t) >= alpha * (k-th largest p_exp)}
    score(t) = log p_exp(t) - log p_ama(t) for t in V, -inf elsewhere

p_exp is the conditional stream's distribution, p_ama the unconditional stream's. Using the k-th largest
probability instead of the maximum (k = 1, plain contrastive decoding) keeps V from collapsing to one token
where the expert is confident. Tokens are then drawn from softmax(score).
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def cdk_candidates(log_p_expert: torch.Tensor, alpha: torch.Tensor | float, k: torch.Tensor | int) -> torch.Tensor:
    """(G, V) bool candidate set V; alpha and k are scalars or per-group (G,) tensors."""
    groups, vocab_size = log_p_expert.shape
    ks = torch.as_tensor(k, device=log_p_expert.device).expand(groups).clamp(1, vocab_size)
    alphas = torch.as_tensor(alpha, dtype=log_p_expert.dtype, device=log_p_expert.device).expand(groups)
    if isinstance(k, int) and k == 1:  # the largest: a max, not a sort (the same value)
        kth_largest = log_p_expert.max(dim=-1, keepdim=True).values
    else:
        kth_largest = log_p_expert.sort(dim=-1, descending=True).values.gather(1, (ks - 1).unsqueeze(1))
    # In log space: log p >= log alpha + log p_k. When fewer than k tokens are allowed (p_k = 0, e.g. the forced
    # <eos> after an image), the threshold is -inf and V is every allowed token; forbidden ones (p_exp = 0)
    # are never candidates.
    allowed = log_p_expert > NEG_INF
    return allowed & (log_p_expert >= alphas.log().unsqueeze(1) + kth_largest)


def cdk_scores(
    log_p_expert: torch.Tensor, log_p_amateur: torch.Tensor, alpha: torch.Tensor | float, k: torch.Tensor | int
) -> torch.Tensor:
    """(G, V) scores: log p_exp - log p_ama on the candidate set, -inf elsewhere (inputs are log-softmaxes)."""
    candidates = cdk_candidates(log_p_expert, alpha, k)
    difference = torch.where(candidates, log_p_expert - log_p_amateur, torch.zeros_like(log_p_expert))
    return difference.masked_fill(~candidates, NEG_INF)
