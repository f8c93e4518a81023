"""Token batches, the batch-source protocol the trainer consumes, and packing documents into fixed-length rows.

Convention used everywhere in training: `loss_mask[b, i]` says whether token `tokens[b, i]` is a *target*,
i.e. trained as the prediction made at position i-1. The trainer therefore scores `logits[:, :-1]` against
`tokens[:, 1:]` under `loss_mask[:, 1:]`; position 0 of a row is never a target.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

# One document (or a retrieval group: retrieved documents + the query) ready to pack: ids and target mask.
PackUnit = tuple[list[int], list[bool]]


@dataclass(frozen=True)
class TokenBatch:
    tokens: torch.Tensor  # (B, T) int64
    loss_mask: torch.Tensor  # (B, T) bool, aligned with tokens (see module docstring)

    def __post_init__(self) -> None:
        if self.tokens.shape != self.loss_mask.shape or self.tokens.ndim != 2:
            raise ValueError(f"tokens {tuple(self.tokens.shape)} and loss_mask {tuple(self.loss_mask.shape)}")

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()

    @property
    def num_targets(self) -> int:
        return int(self.loss_mask[:, 1:].sum())

    def pin_memory(self) -> TokenBatch:
        """Page-locked copies (DataLoader's pin_memory calls this), so `to(cuda, non_blocking=True)` overlaps."""
        return TokenBatch(self.tokens.pin_memory(), self.loss_mask.pin_memory())

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.tokens.to(device, non_blocking=True), self.loss_mask.to(device, non_blocking=True))


class BatchSource(Protocol):
    """What the trainer reads: micro-batch number `index` -> a batch, as a pure function of `index`.

    Being a pure function of the index is what makes resume exact (the data position is just a number) and
    data parallelism simple (rank r of R reads indices r, R + r, 2R + r, ...: every rank draws different
    data, and R ranks see exactly the micro-batches one process with R-fold accumulation would see).
    """

    def batch(self, index: int) -> TokenBatch: ...


@dataclass
class PackStats:
    documents: int = 0
    split_documents: int = 0  # units longer than a row, continued on the next row(s)
    padding: int = 0  # pad tokens written

    def padding_fraction(self, total_tokens: int) -> float:
        return self.padding / max(total_tokens, 1)


def pack_rows(
    units: Iterator[PackUnit], rows: int, seq_len: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, PackStats]:
    """Greedily pack units into `rows` rows of `seq_len` tokens, padding each row's tail with `pad_id`.

    A unit that does not fit in what is left of a row starts the next row (documents stay whole); only a unit
    longer than `seq_len` is split, starting on a fresh row and continuing on the following ones. The unit that
    overflows the last row is dropped: batches are independent, and the stream of units is infinite.
    Pad tokens are never targets.
    """
    tokens = np.full((rows, seq_len), pad_id, dtype=np.int64)
    targets = np.zeros((rows, seq_len), dtype=bool)
    stats = PackStats()
    row, column = 0, 0
    while row < rows:
        ids, mask = next(units)
        if len(ids) != len(mask):
            raise ValueError(f"unit of {len(ids)} ids has a loss mask of {len(mask)}")
        if len(ids) > seq_len - column and column > 0:
            # Does not fit after what is already in this row: close the row.
            stats.padding += seq_len - column
            row, column = row + 1, 0
            if row == rows:
                break
        stats.documents += 1
        stats.split_documents += len(ids) > seq_len
        offset = 0
        while offset < len(ids) and row < rows:
            take = min(len(ids) - offset, seq_len - column)
            tokens[row, column : column + take] = ids[offset : offset + take]
            targets[row, column : column + take] = mask[offset : offset + take]
            offset, column = offset + take, column + take
            if column == seq_len:
                row, column = row + 1, 0
    return tokens, targets, stats


def to_batch(tokens: np.ndarray, targets: np.ndarray) -> TokenBatch:
    return TokenBatch(torch.from_numpy(tokens), torch.from_numpy(targets))


class PackedBatches(abc.ABC):
    """A `BatchSource` of packed rows: micro-batch `index` -> `batch_size` rows of `seq_len` tokens packed from
    `units`, drawn from an rng seeded by (seed, salt, index), so every batch is a pure function of its index.
    Subclasses say what a unit is (a pretraining document, an instruction-tuning example)."""

    def __init__(self, vocab_pad_id: int, batch_size: int, seq_len: int, seed: int, seed_salt: str) -> None:
        self.pad_id = vocab_pad_id
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.seed_salt = seed_salt
        self.last_stats = PackStats()

    @abc.abstractmethod
    def units(self, rng: random.Random) -> Iterator[PackUnit]:
        """The units to pack into one batch, drawn from `rng` (packing stops once the rows are full)."""

    def batch(self, index: int) -> TokenBatch:
        rng = random.Random(f"{self.seed}:{self.seed_salt}:{index}")
        tokens, targets, self.last_stats = pack_rows(self.units(rng), self.batch_size, self.seq_len, self.pad_id)
        return to_batch(tokens, targets)
