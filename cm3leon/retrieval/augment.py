"""The retrieval-augmented sequence layout, shared by training and inference so both see the same tokens.

RA-CM3 / CM3Leon prepend the retrieved documents to the query document: each retrieved document is a whole
`<bos> caption <break> IMAGE <eos>` document (text first, as a text->image document is), the most relevant one
last, right before the query. Missing modalities simply drop out of the document.
"""

from __future__ import annotations

from collections.abc import Sequence

from cm3leon.tokenizers.vocab import Document, ImageCodes, Vocabulary


def retrieved_document(caption: str | None, codes: ImageCodes | None) -> Document:
    """A retrieved document as segments: its text (if any), then its image (if any)."""
    document: Document = []
    if caption is not None:
        document.append(caption)
    if codes is not None:
        document.append(codes)
    if not document:
        raise ValueError("a retrieved document needs text, an image or both")
    return document


def retrieved_prefix_ids(vocab: Vocabulary, retrieved: Sequence[Document]) -> list[int]:
    """`<bos> doc <eos>` for each retrieved document, in the given order (most relevant last)."""
    ids: list[int] = []
    for document in retrieved:
        ids.extend(vocab.encode_document(document))
    return ids
