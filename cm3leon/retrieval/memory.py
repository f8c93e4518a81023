"""The retrieval memory: documents and their embeddings in a Qdrant collection, searched with the paper's rules.

One collection per memory name; its vector size and distance come from the retriever's config. Each point's
id is uuid5 of the document id, so re-building a memory overwrites the same points (idempotent). Payload:

    doc_id, text (or null), has_text, has_image, split,
    owner     the tenant whose document it is (absent: the shared base memory, readable by every tenant),
    codes     the image's VQ codes inline, a list of ints (when an image tokenizer was given), or
    image_key the object-store key of the image (otherwise; the serving side uploads it there).

Why codes inline: the decoder's prompt needs a retrieved document's image *as codes*, not pixels. A 64x64
image is 64 codes (a few hundred bytes of JSON), so carrying them in the payload costs almost nothing, and the
worker that builds a prompt gets everything from the one search call, with no object-store round trip per
retrieved document and no re-encoding. Images whose codes would not be small (large images, or a memory
built without a tokenizer) are referenced by `image_key` instead.

Owners: a served memory holds every tenant's documents beside the shared base. A document's point id is derived
from (owner, doc_id), so one tenant can never overwrite or delete another's; a search made for a reader sees
only the reader's documents and the base ones. Offline tools (building, training, evaluation) read as nobody
in particular: they see everything, as before.

Where the store lives: `QDRANT_URL` (and `QDRANT_API_KEY`) in the environment, or `MemoryConfig.url`, selects
a Qdrant server with no code change; otherwise the embedded local mode keeps the collection under
`MemoryConfig.path` (or in RAM for ":memory:"). Local mode allows one client per path at a time.

This module imports `qdrant_client` (which loads grpc), so nothing else in the package imports it at module
level: only code that actually opens a memory pays for it.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from qdrant_client import QdrantClient, models

from cm3leon.retrieval.config import Distance, MemoryConfig
from cm3leon.retrieval.documents import RetrievalDocument
from cm3leon.retrieval.owners import BASE_OWNER, READER
from cm3leon.retrieval.search import Candidate, select_documents

if TYPE_CHECKING:
    from cm3leon.retrieval.retriever import Retriever

QDRANT_URL_ENV = "QDRANT_URL"
QDRANT_API_KEY_ENV = "QDRANT_API_KEY"
IN_MEMORY = ":memory:"
# Namespace of the point ids: uuid5(namespace, doc_id). Fixed forever: changing it would orphan every point.
POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "cm3leon/retrieval-memory")
QDRANT_DISTANCES: dict[str, models.Distance] = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT}
OWNER_FIELD = "owner"  # absent on the shared base memory's documents


def point_id(doc_id: str, owner: str = BASE_OWNER) -> str:
    """The point of a document: base documents keep the id of their doc_id alone; an owner's are apart."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{owner}\0{doc_id}" if owner else doc_id))


def visible_to(reader: str | None) -> models.Filter | None:
    """The filter of what `reader` may read: its own documents and the base memory's (None: no filter)."""
    if reader is None:
        return None
    base = models.IsEmptyCondition(is_empty=models.PayloadField(key=OWNER_FIELD))
    if reader == BASE_OWNER:
        return models.Filter(must=[base])
    own = models.FieldCondition(key=OWNER_FIELD, match=models.MatchValue(value=reader))
    return models.Filter(should=[own, base])


@dataclass(frozen=True)
class RetrievedDocument:
    doc_id: str
    score: float  # similarity to the query
    text: str | None
    has_text: bool
    has_image: bool
    split: str | None
    codes: tuple[int, ...] | None  # VQ codes in raster order, when stored inline
    image_key: str | None  # object-store key, when the codes are not inline

    @classmethod
    def from_payload(cls, payload: dict[str, Any], score: float) -> RetrievedDocument:
        codes = payload.get("codes")
        return cls(
            doc_id=payload["doc_id"],
            score=score,
            text=payload.get("text"),
            has_text=bool(payload["has_text"]),
            has_image=bool(payload["has_image"]),
            split=payload.get("split"),
            codes=tuple(codes) if codes is not None else None,
            image_key=payload.get("image_key"),
        )


def connect(config: MemoryConfig) -> QdrantClient:
    """A server client when a URL is configured (config, then env), else the embedded local mode."""
    url = config.url or os.environ.get(QDRANT_URL_ENV)
    if url:
        return QdrantClient(url=url, api_key=os.environ.get(QDRANT_API_KEY_ENV))
    if config.path == IN_MEMORY:
        return QdrantClient(location=IN_MEMORY)
    return QdrantClient(path=config.path)


class Memory:
    """One named collection of documents. Create it with `Memory.open(...)` or `Memory.for_retriever(...)`."""

    def __init__(self, client: QdrantClient, config: MemoryConfig, vector_size: int, distance: Distance) -> None:
        self.client = client
        self.config = config
        self.vector_size = vector_size
        self.distance = distance
        self._ensure_collection()

    @classmethod
    def open(
        cls, config: MemoryConfig, vector_size: int, distance: Distance, client: QdrantClient | None = None
    ) -> Memory:
        return cls(client if client is not None else connect(config), config, vector_size, distance)

    @classmethod
    def for_retriever(cls, config: MemoryConfig, retriever: Retriever, client: QdrantClient | None = None) -> Memory:
        return cls.open(config, retriever.config.embed_dim, retriever.config.distance, client)

    @property
    def collection(self) -> str:
        return self.config.name

    def _ensure_collection(self) -> None:
        if not self.client.collection_exists(self.collection):
            self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=self.vector_size, distance=QDRANT_DISTANCES[self.distance]),
            )
            return
        params = self.client.get_collection(self.collection).config.params.vectors
        if not isinstance(params, models.VectorParams) or params.size != self.vector_size:
            raise ValueError(
                f"collection {self.collection!r} exists with vectors {params}, not size {self.vector_size}: "
                "it was built by another retriever; use another memory name"
            )

    def count(self, reader: str | None = None) -> int:
        """Documents `reader` can read (None: all of them)."""
        return self.client.count(self.collection, count_filter=visible_to(reader), exact=True).count

    def codes_fingerprint(self) -> str | None:
        """The image-tokenizer fingerprint of the memory's inline codes (None: no inline codes, or unrecorded)."""
        has_codes = models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="codes"))])
        points, _ = self.client.scroll(self.collection, scroll_filter=models.Filter(must_not=has_codes.must), limit=1)
        return points[0].payload.get("codes_vq") if points and points[0].payload else None

    def clear(self) -> None:
        """Drop every document (the collection is recreated empty)."""
        self.client.delete_collection(self.collection)
        self._ensure_collection()

    def delete(self, doc_ids: Sequence[str], owner: str = BASE_OWNER) -> None:
        """Remove `owner`'s documents by id (ids it has not are ignored; another owner's are never touched)."""
        points = [point_id(d, owner) for d in doc_ids]
        self.client.delete(self.collection, points_selector=models.PointIdsList(points=points))  # type: ignore[arg-type]

    def close(self) -> None:
        self.client.close()

    # ----- writing -----

    def payload(
        self,
        document: RetrievalDocument,
        codes: Sequence[int] | None,
        codes_vq: str | None = None,
        owner: str = BASE_OWNER,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "doc_id": document.doc_id,
            "text": document.text,
            "has_text": document.has_text,
            "has_image": document.has_image,
            "split": document.split,
        }
        if owner:
            payload[OWNER_FIELD] = owner
        if document.has_image and codes is not None:
            payload["codes"] = [int(c) for c in codes]
            payload["codes_vq"] = codes_vq  # the image tokenizer's fingerprint: whose codes these are
        elif document.has_image:
            payload["image_key"] = self.config.image_key_template.format(memory=self.collection, doc_id=document.doc_id)
        return payload

    def upsert(
        self,
        documents: Sequence[RetrievalDocument],
        vectors: np.ndarray,
        codes: Sequence[Sequence[int] | None] | None = None,
        codes_vq: str | None = None,
        owner: str = BASE_OWNER,
    ) -> None:
        """Insert or overwrite `owner`'s documents with their embeddings (N, D) and, optionally, each image's
        codes (made by the image tokenizer whose fingerprint is `codes_vq`)."""
        if vectors.shape != (len(documents), self.vector_size):
            raise ValueError(f"expected vectors ({len(documents)}, {self.vector_size}), got {vectors.shape}")
        codes = codes if codes is not None else [None] * len(documents)
        points = [
            models.PointStruct(
                id=point_id(doc.doc_id, owner),
                vector=vector.tolist(),
                payload=self.payload(doc, doc_codes, codes_vq, owner),
            )
            for doc, vector, doc_codes in zip(documents, vectors, codes, strict=True)
        ]
        for start in range(0, len(points), self.config.upsert_batch_size):
            self.client.upsert(self.collection, points=points[start : start + self.config.upsert_batch_size])

    # ----- searching -----

    def candidates(self, query_vector: np.ndarray, exclude_ids: Collection[str] = ()) -> list[Candidate]:
        """The `config.candidates` nearest documents the context's reader may read, never one of `exclude_ids`."""
        query_filter = visible_to(READER.get())
        if exclude_ids:
            excluded = [point_id(doc_id) for doc_id in exclude_ids]
            query_filter = query_filter or models.Filter()
            query_filter.must_not = [models.HasIdCondition(has_id=excluded)]  # type: ignore[list-item]
        response = self.client.query_points(
            self.collection,
            query=np.asarray(query_vector, dtype=np.float32).tolist(),
            query_filter=query_filter,
            limit=self.config.candidates,
            with_payload=True,
            with_vectors=True,
        )
        return [
            Candidate(
                doc_id=point.payload["doc_id"],
                score=float(point.score),
                vector=np.asarray(point.vector, dtype=np.float32),
                has_text=bool(point.payload["has_text"]),
                has_image=bool(point.payload["has_image"]),
                payload=point.payload,
            )
            for point in response.points
            if point.payload is not None
        ]

    def search(
        self, query_vector: np.ndarray, k: int | None = None, exclude_ids: Collection[str] = ()
    ) -> list[RetrievedDocument]:
        """Up to k documents by relevance, modality and diversity (see `search.py`), none in `exclude_ids`."""
        chosen = select_documents(
            self.candidates(query_vector, exclude_ids),
            k=k if k is not None else self.config.k,
            diversity_threshold=self.config.diversity_threshold,
            modality_bonus=self.config.modality_bonus,
        )
        return [RetrievedDocument.from_payload(dict(c.payload), c.score) for c in chosen]

    def retrieve(
        self,
        retriever: Retriever,
        queries: Sequence[RetrievalDocument],
        k: int | None = None,
        query_dropout: float = 0.0,
        rng: random.Random | None = None,
        exclude_ids: Sequence[Collection[str]] | None = None,
    ) -> list[list[RetrievedDocument]]:
        """Documents for each query document, embedded as documents are. Each query's own `doc_id` is always
        excluded (a training sample never retrieves itself), plus its entry of `exclude_ids`. Pass
        `query_dropout=config.query_dropout` when retrieving for training samples."""
        vectors = retriever.embed_documents(queries, query_dropout=query_dropout, rng=rng)
        extra = exclude_ids if exclude_ids is not None else [()] * len(queries)
        return [
            self.search(vector, k, {query.doc_id, *excluded})
            for query, vector, excluded in zip(queries, vectors, extra, strict=True)
        ]
