"""The CorpusService's model side: add documents to the memory (embedded, with inline VQ codes), search, delete.

Every call is made for an owner (a tenant, or the shared base memory's BASE_OWNER): documents are written and
deleted as theirs, searches see theirs and the base's, and counts are of what they can read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cm3leon.inference.engine import Engine
from cm3leon.inference.retrieval import as_context, retrieve
from cm3leon.requests import RetrievedContext
from cm3leon.retrieval.documents import RetrievalDocument
from cm3leon.retrieval.memory import Memory
from cm3leon.retrieval.owners import reading_as
from cm3leon.retrieval.retriever import Retriever


@dataclass(frozen=True, eq=False)
class NewDocument:
    doc_id: str
    text: str | None
    image: np.ndarray | None  # uint8 (H, W, 3), any size


def resized(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.array(Image.fromarray(image).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))


def add_documents(
    engine: Engine, memory: Memory, retriever: Retriever, documents: Sequence[NewDocument], owner: str
) -> int:
    """Embed and upsert as `owner`'s (its same id: overwritten); images also stored as this model's VQ codes.
    Returns the count of documents the owner can read."""
    size = retriever.config.image_size
    batch = [
        RetrievalDocument(d.doc_id, text=d.text, image=resized(d.image, size) if d.image is not None else None)
        for d in documents
    ]
    bundle = engine.bundle
    encode = bundle.image_tokenizer is not None
    codes = [bundle.encode_image(d.image) if d.image is not None and encode else None for d in documents]
    memory.upsert(batch, retriever.embed_documents(batch), codes, owner=owner)
    return memory.count(owner)


def search(
    memory: Memory, retriever: Retriever, text: str | None, image: np.ndarray | None, k: int, reader: str
) -> list[RetrievedContext]:
    with reading_as(reader):
        return as_context(retrieve(memory, retriever, text, image, k or memory.config.k))


def delete_documents(memory: Memory, doc_ids: Sequence[str], owner: str) -> int:
    memory.delete(doc_ids, owner)
    return memory.count(owner)
