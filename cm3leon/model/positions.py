"""Rotary position embedding (the optional alternative to the paper's learned absolute positions)."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotates query/key channel pairs by position-dependent angles (RoFormer), half-split channel layout."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float) -> None:
        super().__init__()
        inverse_frequencies = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inverse_frequencies)
        # Tables are derived from the config, so they stay out of checkpoints.
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, H, T, D), positions (B or 1, T) -> x rotated, same dtype."""
        cos = self.cos.float()[positions].unsqueeze(1)  # (B, 1, T, D/2); float even if the model is cast to bf16
        sin = self.sin.float()[positions].unsqueeze(1)
        first, second = x.float().chunk(2, dim=-1)
        rotated = torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)
        return rotated.to(x.dtype)
