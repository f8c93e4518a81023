"""Retrieved context for prompts: search the memory (the paper's relevance, modality and diversity rules) and
prepend the documents, each `<bos> ... <eos>`, to the query prompt, as retrieval-augmented pretraining does.

A retrieved document contributes its text and, when its VQ codes are stored inline and match this model's
image grid, its image (caption then image, the text->image direction). Documents that would overflow the
model's context are dropped, last first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cm3leon.requests import RetrievedContext
from cm3leon.retrieval.augment import retrieved_document, retrieved_prefix_ids
from cm3leon.retrieval.documents import RetrievalDocument
from cm3leon.tokenizers.vocab import Document, ImageCodes, Vocabulary

if TYPE_CHECKING:
    from cm3leon.retrieval.memory import Memory, RetrievedDocument
    from cm3leon.retrieval.retriever import Retriever


def retrieve(
    memory: Memory, retriever: Retriever, text: str | None, image: np.ndarray | None, k: int
) -> list[RetrievedDocument]:
    """Up to k documents for a query of text and/or image (k = 0: none)."""
    if k <= 0:
        return []
    size = retriever.config.image_size
    if image is not None and image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
    query = RetrievalDocument(doc_id="query", text=text, image=image)
    return memory.search(retriever.embed_documents([query])[0], k=k)


def context_segments(vocab: Vocabulary, document: RetrievedDocument) -> Document:
    codes = None
    if document.codes is not None and len(document.codes) == vocab.codes_per_image:
        codes = ImageCodes.of(document.codes)
    if not document.text and codes is None:
        return []
    return retrieved_document(document.text or None, codes)


def with_context(
    vocab: Vocabulary, documents: Sequence[RetrievedDocument], prompt_ids: list[int], budget: int
) -> tuple[list[int], list[RetrievedDocument]]:
    """Prompt ids with the retrieved documents (given best first) in front, as many of the best as fit `budget`.

    The layout is training's (`cm3leon.retrieval.augment`): the most relevant document last, right before the
    query, so what the model reads at inference is what it was trained on.
    """
    kept = [d for d in documents if context_segments(vocab, d)]
    while kept:
        prefix = retrieved_prefix_ids(vocab, [context_segments(vocab, d) for d in reversed(kept)])
        if len(prefix) + len(prompt_ids) <= budget:
            return prefix + prompt_ids, kept
        kept = kept[:-1]
    return prompt_ids, []


def as_context(documents: Sequence[RetrievedDocument]) -> list[RetrievedContext]:
    return [RetrievedContext(d.doc_id, d.score, d.text, d.has_text, d.has_image) for d in documents]
