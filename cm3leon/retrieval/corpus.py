"""Building a memory from the shapes world: generate documents, embed them in batches, upsert them.

Idempotent: document ids are a function of (split, seed, index) and point ids of document ids, so building
the same memory again overwrites the same points and the count does not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from cm3leon.retrieval.documents import RetrievalDocument

if TYPE_CHECKING:
    from cm3leon.retrieval.memory import Memory
    from cm3leon.retrieval.retriever import Retriever
    from cm3leon.tokenizers.image import ImageTokenizer


def batched(items: Iterable[RetrievalDocument], size: int) -> Iterator[list[RetrievalDocument]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def image_codes(
    documents: Sequence[RetrievalDocument], image_tokenizer: ImageTokenizer | None
) -> list[list[int] | None] | None:
    """Each image's VQ codes in raster order (None for text-only documents); None without a tokenizer."""
    if image_tokenizer is None:
        return None
    with_image = [i for i, doc in enumerate(documents) if doc.image is not None]
    codes: list[list[int] | None] = [None] * len(documents)
    if with_image:
        grids = image_tokenizer.encode(np.stack([documents[i].image for i in with_image]))  # type: ignore[misc]
        for i, grid in zip(with_image, grids.reshape(len(with_image), -1).tolist(), strict=True):
            codes[i] = grid
    return codes


def build_memory(
    memory: Memory,
    retriever: Retriever,
    documents: Iterable[RetrievalDocument],
    total: int | None = None,
    image_tokenizer: ImageTokenizer | None = None,
    progress_bar: bool = True,
) -> int:
    """Embed and upsert `documents` in batches of `memory.config.upsert_batch_size`; returns how many."""
    written = 0
    with tqdm(total=total, unit="doc", disable=not progress_bar, dynamic_ncols=True) as bar:
        for batch in batched(documents, memory.config.upsert_batch_size):
            codes_vq = image_tokenizer.fingerprint() if image_tokenizer is not None else None
            memory.upsert(batch, retriever.embed_documents(batch), image_codes(batch, image_tokenizer), codes_vq)
            written += len(batch)
            bar.update(len(batch))
    return written
