"""Cross-modal recall@k: the retriever's own quality measure, shared by its trainer and its evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_KS: tuple[int, ...] = (1, 5)


def recall_at_k(
    similarity: np.ndarray, query_keys: Sequence[str], gallery_keys: Sequence[str], ks: Sequence[int] = RECALL_KS
) -> dict[int, np.ndarray]:
    """For each k, a (Q,) bool array: does any of the top-k gallery items (by similarity) share the query's key?"""
    if similarity.shape != (len(query_keys), len(gallery_keys)):
        raise ValueError(f"similarity {similarity.shape} does not match {len(query_keys)} x {len(gallery_keys)} keys")
    ids: dict[str, int] = {}
    query_ids = np.array([ids.setdefault(key, len(ids)) for key in query_keys])
    gallery_ids = np.array([ids.setdefault(key, len(ids)) for key in gallery_keys])
    # Stable sort of the negated scores: ties keep gallery order, so results do not depend on the platform.
    ranking = np.argsort(-similarity, axis=1, kind="stable")[:, : max(ks)]
    matches = gallery_ids[ranking] == query_ids[:, None]  # (Q, max k)
    return {k: matches[:, :k].any(axis=1) for k in ks}
