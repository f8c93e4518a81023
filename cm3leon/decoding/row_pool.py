"""A fixed pool of KV-cache rows for the scheduler: allocated once, handed out lowest index first.

Every row holds `row_length` positions plus one scratch position: rows that take part in a decode step without
a request (padding the step to its minimum size, or rows still being prefilled) write there and never touch a
real position. Lowest-first allocation keeps the rows in use packed at the front, so a decode step runs over
rows 0..n-1 of the caches without gathering them.
"""

from __future__ import annotations

import heapq

import torch

from cm3leon.model.kv_cache import KVCache
from cm3leon.model.transformer import Transformer


class RowPool:
    """`capacity` cache rows of `row_length` positions (+1 scratch) in every layer of `model`."""

    def __init__(self, model: Transformer, capacity: int, row_length: int, dtype: torch.dtype | None = None) -> None:
        if row_length > model.config.max_seq_len:
            raise ValueError(f"row_length {row_length} exceeds the model's max_seq_len {model.config.max_seq_len}")
        self.capacity = capacity
        self.row_length = row_length
        self.caches: list[KVCache] = model.new_row_caches(capacity, row_length + 1, dtype)
        self._free = list(range(capacity))
        heapq.heapify(self._free)

    @property
    def scratch_position(self) -> int:
        return self.row_length

    @property
    def free_rows(self) -> int:
        return len(self._free)

    @property
    def bytes_per_row(self) -> int:
        """KV-cache bytes one row holds over all layers."""
        return sum(cache.bytes_per_row() for cache in self.caches)

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise RuntimeError(f"{count} rows asked for, {len(self._free)} free")
        return [heapq.heappop(self._free) for _ in range(count)]

    def release(self, rows: list[int]) -> None:
        for row in rows:
            heapq.heappush(self._free, row)
