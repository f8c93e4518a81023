"""A static key/value cache: preallocated once, written at explicit positions, never resized during decoding.

Why static: a cache that grows by concatenation reallocates every step; one indexed by `input_pos` keeps every
decode step the same shapes (friendly to CUDA graphs / torch.compile) and lets left-padded rows share one
position counter.
"""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of one attention layer for up to `max_batch_size` rows and `max_seq_length` positions."""

    def __init__(
        self,
        max_batch_size: int,
        max_seq_length: int,
        n_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        shape = (max_batch_size, n_heads, max_seq_length, head_dim)
        # Not persistent: a cache is runtime state and must never end up in a checkpoint.
        self.register_buffer("keys", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        # The position of every cache slot, for building attention masks without a per-step allocation.
        self.register_buffer("positions", torch.arange(max_seq_length, device=device), persistent=False)

    @property
    def max_batch_size(self) -> int:
        return self.keys.shape[0]

    @property
    def max_seq_length(self) -> int:
        return self.keys.shape[2]

    def update(
        self, input_pos: torch.Tensor, new_keys: torch.Tensor, new_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H, T, D) keys/values at positions `input_pos` (T,); return the first B rows of the cache."""
        batch = new_keys.shape[0]
        self.keys[:batch, :, input_pos] = new_keys.to(self.keys.dtype)
        self.values[:batch, :, input_pos] = new_values.to(self.values.dtype)
        return self.keys[:batch], self.values[:batch]

    def write_rows(
        self, rows: torch.Tensor | None, positions: torch.Tensor, new_keys: torch.Tensor, new_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (R, H, T, D) keys/values of cache rows `rows` (R,) at per-row positions `positions` (R, T);
        return those rows' whole caches (R, H, S, D). `rows=None`: rows 0..R-1 (no gather on the read)."""
        batch = new_keys.shape[0]
        row_index = torch.arange(batch, device=positions.device) if rows is None else rows
        row_index = row_index.unsqueeze(1).expand_as(positions)
        # Advanced indices around a slice put their dims first: the target is (R, T, H, D).
        self.keys[row_index, :, positions] = new_keys.transpose(1, 2).to(self.keys.dtype)
        self.values[row_index, :, positions] = new_values.transpose(1, 2).to(self.values.dtype)
        if rows is None:
            return self.keys[:batch], self.values[:batch]
        return self.keys[rows], self.values[rows]

    def bytes_per_row(self) -> int:
        """Memory of one cache row (keys and values, every position) in this layer."""
        return 2 * self.keys[0].numel() * self.keys.element_size()
