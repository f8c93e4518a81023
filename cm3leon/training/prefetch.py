"""Micro-batches built ahead of the training loop by worker processes (a `torch.utils.data.DataLoader`).

A `BatchSource` is a pure function of the micro-batch index, so prefetching is only a matter of feeding the
indices the loop will ask for, in order, to a DataLoader: its workers call `source.batch(index)` and the loop
receives exactly what it would have built itself. `take(index)` checks that order, so a mismatch fails loudly
instead of training on the wrong data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch.utils.data import DataLoader, Dataset, Sampler

from cm3leon.training.packing import BatchSource, TokenBatch

# Batches each worker keeps ready: enough to hide a slow batch behind a few fast steps.
PREFETCH_PER_WORKER = 4


class _IndexedSource(Dataset[tuple[int, TokenBatch]]):
    def __init__(self, source: BatchSource) -> None:
        self.source = source

    def __getitem__(self, index: int) -> tuple[int, TokenBatch]:
        return index, self.source.batch(index)


class _IndexStream(Sampler[int]):
    """The (possibly endless) sequence of micro-batch indices the loop will consume."""

    def __init__(self, indices: Iterable[int]) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class PrefetchedBatches:
    """Batches for `indices`, built by `workers` processes; `take(i)` returns the batch of the next index `i`."""

    def __init__(self, source: BatchSource, indices: Iterable[int], workers: int, pin_memory: bool = False) -> None:
        loader = DataLoader(
            _IndexedSource(source),
            sampler=_IndexStream(indices),
            batch_size=None,  # the source already returns whole micro-batches
            num_workers=workers,
            prefetch_factor=PREFETCH_PER_WORKER,
            pin_memory=pin_memory,
            multiprocessing_context="fork",
        )
        self._iterator: Iterator[tuple[int, TokenBatch]] | None = iter(loader)

    def take(self, index: int) -> TokenBatch:
        if self._iterator is None:
            raise RuntimeError("prefetching was closed")
        got, batch = next(self._iterator)
        if got != index:
            raise RuntimeError(f"prefetched micro-batch {got} but the loop asked for {index}")
        return batch

    def close(self) -> None:
        """Stop the workers (the loop may end long before the endless index stream does)."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
