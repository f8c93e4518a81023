"""Choosing k documents out of the nearest neighbours: the RA-CM3 / CM3Leon retrieval criteria.

Pure functions over candidates (no store involved), so the rules are testable on hand-made vectors:

- relevance: the candidate's similarity to the query (cosine / inner product of normalised embeddings);
- modality: documents with both text and image get `modality_bonus` added to their relevance for ranking, so
  at equal relevance they win (a text-only or image-only document is a weaker context for the decoder);
- diversity: a candidate whose similarity to the query, or to a document already taken, exceeds
  `diversity_threshold` is a near-duplicate and is skipped (retrieving the query itself or copies of one
  document adds no information).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Candidate:
    """A nearest neighbour as the store returns it."""

    doc_id: str
    score: float  # similarity to the query
    vector: np.ndarray  # (D,) the document's normalised embedding
    has_text: bool
    has_image: bool
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_multimodal(self) -> bool:
        return self.has_text and self.has_image


def ranking_score(candidate: Candidate, modality_bonus: float) -> float:
    return candidate.score + (modality_bonus if candidate.is_multimodal else 0.0)


def select_documents(
    candidates: Sequence[Candidate], k: int, diversity_threshold: float, modality_bonus: float
) -> list[Candidate]:
    """Up to `k` candidates, best ranking score first, none a near-duplicate of the query or of another.

    Fewer than `k` come back when the candidates run out (fetch more candidates to avoid that)."""
    ranked = sorted(candidates, key=lambda c: ranking_score(c, modality_bonus), reverse=True)
    taken: list[Candidate] = []
    for candidate in ranked:
        if len(taken) == k:
            break
        if candidate.score > diversity_threshold:
            continue
        if any(float(candidate.vector @ other.vector) > diversity_threshold for other in taken):
            continue
        taken.append(candidate)
    return taken
