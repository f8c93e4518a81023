"""The Qdrant memory in embedded local mode: building (idempotent), payloads (inline VQ codes or image keys),
and search with the paper's rules: relevance, modality, diversity, exclusions."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cm3leon.data.world import World, WorldConfig
from cm3leon.retrieval.config import MemoryConfig, RetrieverConfig
from cm3leon.retrieval.corpus import build_memory
from cm3leon.retrieval.documents import RetrievalDocument, world_documents
from cm3leon.retrieval.memory import Memory, point_id
from cm3leon.retrieval.retriever import Retriever
from cm3leon.retrieval.search import Candidate, select_documents
from cm3leon.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from cm3leon.tokenizers.text import TextTokenizer, TextTokenizerConfig
from cm3leon.tokenizers.world_text import train_world_tokenizer

WORLD = World(WorldConfig.preset("tiny"))
DIM = 4



@pytest.fixture(scope="module")
def retriever() -> Retriever:
    torch.manual_seed(0)
    tokenizer: TextTokenizer = train_world_tokenizer(WORLD.config, TextTokenizerConfig.preset("tiny"), n_scenes=30)
    return Retriever.build(RetrieverConfig.preset("tiny"), tokenizer)


def memory_of(vectors: dict[RetrievalDocument, list[float]], **overrides: object) -> Memory:
    """An in-RAM memory holding hand-placed vectors (the search rules are about vectors, not encoders)."""
    memory = Memory.open(MemoryConfig.preset("tiny", **overrides), vector_size=DIM, distance="cosine")
    docs = list(vectors)
    memory.upsert(docs, np.array([vectors[d] for d in docs], dtype=np.float32))
    return memory


def unit(*values: float) -> list[float]:
    vector = np.array(values, dtype=np.float64)
    return (vector / np.linalg.norm(vector)).tolist()


IMAGE = np.zeros((64, 64, 3), dtype=np.uint8)


def doc(doc_id: str, image: bool = True, text: bool = True) -> RetrievalDocument:
    return RetrievalDocument(doc_id, text=f"text of {doc_id}" if text else None, image=IMAGE if image else None)


# --- building ----------------------------------------------------------------------------------------------


def test_build_is_idempotent_and_stores_inline_codes(retriever: Retriever) -> None:
    torch.manual_seed(0)
    image_tokenizer = ImageTokenizer(ImageTokenizerConfig.preset("shapes")).eval()
    # Diversity off: an untrained encoder maps every document close to every other.
    memory = Memory.for_retriever(MemoryConfig.preset("tiny", diversity_threshold=1.01), retriever)
    documents = list(world_documents(WORLD, 20, seed=3))
    assert build_memory(memory, retriever, documents, image_tokenizer=image_tokenizer, progress_bar=False) == 20
    assert memory.count() == 20
    build_memory(memory, retriever, documents, image_tokenizer=image_tokenizer, progress_bar=False)
    assert memory.count() == 20  # the same ids overwrite the same points

    found = memory.search(retriever.embed_documents(documents[:1])[0], k=2)
    assert found, "a memory of 20 world documents returns neighbours"
    codes_per_image = ImageTokenizerConfig.preset("shapes").codes_per_image
    for result in found:
        assert result.has_text and result.has_image and result.split == "train"
        assert result.codes is not None and len(result.codes) == codes_per_image
        assert all(0 <= c < image_tokenizer.config.codebook_size for c in result.codes)
        assert result.image_key is None
        original = next(d for d in documents if d.doc_id == result.doc_id)
        expected = image_tokenizer.encode(np.stack([original.image])).flatten().tolist()  # type: ignore[list-item]
        assert list(result.codes) == expected and result.text == original.text
    # The memory records whose codes these are; clearing it empties it.
    assert memory.codes_fingerprint() == image_tokenizer.fingerprint()
    memory.clear()
    assert memory.count() == 0 and memory.codes_fingerprint() is None


def test_without_an_image_tokenizer_images_are_referenced_by_key(retriever: Retriever) -> None:
    memory = Memory.for_retriever(MemoryConfig.preset("tiny", name="keys", diversity_threshold=1.01), retriever)
    documents = list(world_documents(WORLD, 3, seed=4))
    build_memory(memory, retriever, documents, progress_bar=False)
    found = memory.search(retriever.embed_documents(documents[:1])[0], k=3)
    assert found and all(r.codes is None and r.image_key == f"memory/keys/{r.doc_id}.png" for r in found)
    assert memory.codes_fingerprint() is None


def test_a_local_path_memory_persists_and_rebuilds_to_the_same_count(retriever: Retriever, tmp_path: Path) -> None:
    config = MemoryConfig.preset("tiny", path=str(tmp_path / "qdrant"))
    documents = list(world_documents(WORLD, 6, seed=5))
    memory = Memory.for_retriever(config, retriever)
    build_memory(memory, retriever, documents, progress_bar=False)
    memory.close()
    reopened = Memory.for_retriever(config, retriever)
    assert reopened.count() == 6
    build_memory(reopened, retriever, documents, progress_bar=False)
    assert reopened.count() == 6
    reopened.close()


def test_point_ids_derive_from_document_ids() -> None:
    assert point_id("train-0-1") == point_id("train-0-1") != point_id("train-0-2")


def test_a_collection_of_another_vector_size_is_refused() -> None:
    memory = Memory.open(MemoryConfig.preset("tiny"), vector_size=DIM, distance="cosine")
    with pytest.raises(ValueError, match="another retriever"):
        Memory.open(MemoryConfig.preset("tiny"), vector_size=DIM + 1, distance="cosine", client=memory.client)


# --- search rules ------------------------------------------------------------------------------------------


def test_relevance_orders_results() -> None:
    memory = memory_of({doc("near"): unit(1, 0.5, 0, 0), doc("far"): unit(1, 2, 0, 0)})
    assert [r.doc_id for r in memory.search(np.array(unit(1, 0, 0, 0)), k=2)] == ["near", "far"]


def test_diversity_skips_near_duplicates_of_the_query_and_of_taken_documents() -> None:
    query = unit(1, 0, 0, 0)
    memory = memory_of(
        {
            doc("copy-of-query"): unit(1, 0.05, 0, 0),  # similarity to the query > 0.9
            doc("best"): unit(1, 1, 0, 0),  # 0.71 to the query
            doc("twin-of-best"): unit(1, 1, 0.1, 0),  # 0.70 to the query, 0.995 to "best"
            doc("other"): unit(1, 0, 1.2, 0),  # 0.64 to the query, 0.45 to "best"
        }
    )
    assert [r.doc_id for r in memory.search(np.array(query), k=2)] == ["best", "other"]
    # With the rule off (threshold above any cosine) the duplicates come back.
    permissive = memory_of(
        {doc("copy-of-query"): unit(1, 0.05, 0, 0), doc("best"): unit(1, 1, 0, 0)}, diversity_threshold=1.01
    )
    assert [r.doc_id for r in permissive.search(np.array(query), k=2)] == ["copy-of-query", "best"]


def test_a_text_and_image_document_beats_a_single_modality_one_at_equal_relevance() -> None:
    query = unit(1, 0, 0, 0)
    # Both at cosine 0.8 to the query and 0.64 to each other (so diversity keeps both).
    vectors = {doc("text-only", image=False): [0.8, 0.6, 0, 0], doc("both"): [0.8, 0, 0.6, 0]}
    assert [r.doc_id for r in memory_of(vectors).search(np.array(query), k=1)] == ["both"]
    assert [r.doc_id for r in memory_of(vectors).search(np.array(query), k=2)] == ["both", "text-only"]
    # The bonus is small: a clearly more relevant single-modality document still wins.
    relevant = {doc("text-only", image=False): unit(1, 0.6, 0, 0), doc("both"): [0.6, 0, 0.8, 0]}
    assert [r.doc_id for r in memory_of(relevant).search(np.array(query), k=1)] == ["text-only"]


def test_exclude_ids_are_never_returned() -> None:
    vectors = {doc("a"): unit(1, 0.8, 0, 0), doc("b"): unit(1, 0, 0.9, 0), doc("c"): unit(1, 0, 0, 1.5)}
    memory = memory_of(vectors)
    query = np.array(unit(1, 0, 0, 0))
    assert [r.doc_id for r in memory.search(query, k=2)] == ["a", "b"]
    assert [r.doc_id for r in memory.search(query, k=2, exclude_ids={"a"})] == ["b", "c"]


def test_retrieve_never_returns_the_query_document_itself(retriever: Retriever) -> None:
    # Diversity off, so only the exclusion can keep the query's own document out.
    memory = Memory.for_retriever(MemoryConfig.preset("tiny", name="self", diversity_threshold=1.01), retriever)
    documents = list(world_documents(WORLD, 8, seed=6))
    build_memory(memory, retriever, documents, progress_bar=False)
    plain = memory.search(retriever.embed_documents(documents[:1])[0], k=1)
    assert [r.doc_id for r in plain] == [documents[0].doc_id]
    results = memory.retrieve(retriever, documents[:3], k=2, exclude_ids=[{documents[5].doc_id}, (), ()])
    for query, found in zip(documents[:3], results, strict=True):
        assert len(found) == 2 and query.doc_id not in {r.doc_id for r in found}
    assert documents[5].doc_id not in {r.doc_id for r in results[0]}


def test_select_documents_returns_fewer_when_candidates_run_out() -> None:
    twin = np.array(unit(1, 1, 0, 0), dtype=np.float32)
    candidates = [Candidate(f"d{i}", 0.7, twin, True, True) for i in range(3)]
    assert [c.doc_id for c in select_documents(candidates, k=2, diversity_threshold=0.9, modality_bonus=0.05)] == ["d0"]


def test_query_dropout_is_applied_to_training_queries(retriever: Retriever) -> None:
    config = replace(MemoryConfig.preset("tiny", name="dropout"), k=1, diversity_threshold=1.01)
    memory = Memory.for_retriever(config, retriever)
    documents = list(world_documents(WORLD, 10, seed=7))
    build_memory(memory, retriever, documents, progress_bar=False)
    query = [RetrievalDocument("q", text=documents[0].text)]
    plain = retriever.embed_documents(query)
    dropped = retriever.embed_documents(query, query_dropout=0.5, rng=random.Random(0))
    assert not np.allclose(plain, dropped)
    assert len(memory.retrieve(retriever, query, query_dropout=0.5, rng=random.Random(0))[0]) == 1
