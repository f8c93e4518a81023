"""Retrieval for retrieval-augmented pretraining: the k neighbours of every training document, computed once.

The memory searched during training is the training corpus itself (each scene as a detailed-caption + image
document), embedded by the trained retriever. Neighbours are computed in batches before the loop starts (exact
inner-product search on the run's device, a GPU when there is one) and cached beside the image codes; the
`RetrievalHook` then only looks them up, so the loop never waits on retrieval. The selection follows the paper's
criteria exactly as serving does (`cm3leon.retrieval.search.select_documents`: relevance, multimodal bonus,
diversity threshold), with query dropout on the query's text, and never returns the query's own scene.

Why not query the Qdrant memory here: local mode searches one query at a time in numpy (hours for 10^5
queries); a Qdrant server would work but adds a service to every training run. The criteria are the same code.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cm3leon.data.language import detailed_caption, short_caption
from cm3leon.data.world import Scene, WorldConfig
from cm3leon.retrieval.augment import retrieved_document
from cm3leon.retrieval.config import RetrievalRules
from cm3leon.retrieval.retriever import Retriever
from cm3leon.retrieval.search import Candidate, select_documents
from cm3leon.tasks.formats import SceneDocument
from cm3leon.tokenizers.vocab import Document
from cm3leon.training.image_corpus import ImageCodeCorpus, render_images

NO_NEIGHBOUR = -1
FINGERPRINT_HEX_CHARS = 16


@dataclass(frozen=True)
class TrainingRetrievalConfig(RetrievalRules):
    """How many documents to retrieve and by which rules (the memory's `RetrievalRules`), and how to compute them."""

    # Queries per similarity matrix block: (block x corpus) floats must fit the device.
    query_block: int = 2048
    render_workers: int = 1
    seed: int = 0


def memory_captions(scenes: tuple[Scene, ...], world: WorldConfig, seed: int) -> list[str]:
    """The memory's text of each corpus document: a detailed caption, a pure function of (seed, index)."""
    return [detailed_caption(scene, world, random.Random(f"{seed}:memory:{i}")) for i, scene in enumerate(scenes)]


def _embed(retriever: Retriever, texts: list[str], images: np.ndarray, dropout: float, seed: int) -> torch.Tensor:
    """Document embeddings (text and image parts averaged, normalised), as a float tensor on the retriever's device."""
    text = retriever.embed_texts(texts, dropout, random.Random(f"{seed}:query-dropout")) if dropout else (
        retriever.embed_texts(texts)
    )
    mixed = text + retriever.embed_images(images)
    mixed /= np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    return torch.from_numpy(mixed).to(retriever.device)


def compute_neighbours(
    retriever: Retriever, corpus: ImageCodeCorpus, world: WorldConfig, config: TrainingRetrievalConfig,
    progress: bool = True,
) -> np.ndarray:
    """(N, k) corpus indices of each document's retrieved neighbours, most relevant first; -1 where fewer."""
    images = render_images(corpus.scenes, world, config.render_workers)
    captions = memory_captions(corpus.scenes, world, config.seed)
    memory = _embed(retriever, captions, images, 0.0, config.seed)
    queries = _embed(retriever, captions, images, config.query_dropout, config.seed)
    keys = np.array([scene.key() for scene in corpus.scenes])
    neighbours = np.full((len(corpus), config.k), NO_NEIGHBOUR, dtype=np.int64)
    memory_cpu = memory.cpu().numpy()
    fetch = min(config.candidates + 8, len(corpus))  # a few spare for the query's own scene and its copies
    for start in tqdm(range(0, len(corpus), config.query_block), desc="retrieving neighbours", disable=not progress):
        scores, indices = (queries[start : start + config.query_block] @ memory.T).topk(fetch, dim=1)
        for row, (row_scores, row_indices) in enumerate(zip(scores.tolist(), indices.tolist(), strict=True)):
            query = start + row
            candidates = [
                Candidate(str(j), s, memory_cpu[j], has_text=True, has_image=True)
                for s, j in zip(row_scores, row_indices, strict=True)
                if keys[j] != keys[query]
            ][: config.candidates]
            chosen = select_documents(candidates, config.k, config.diversity_threshold, config.modality_bonus)
            neighbours[query, : len(chosen)] = [int(c.doc_id) for c in chosen]
    return neighbours


def retriever_fingerprint(retriever: Retriever) -> str:
    digest = hashlib.sha256(repr(retriever.config).encode())
    for name, tensor in sorted(retriever.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:FINGERPRINT_HEX_CHARS]


def cached_neighbours(
    cache_dir: Path, corpus_key: str, retriever: Retriever, corpus: ImageCodeCorpus, world: WorldConfig,
    config: TrainingRetrievalConfig, progress: bool = True,
) -> np.ndarray:
    """`compute_neighbours`, cached under a key of the corpus, the retriever's weights and the rules."""
    rules = hashlib.sha256(repr({**asdict(config), "query_block": 0, "render_workers": 0}).encode()).hexdigest()
    path = cache_dir / f"neighbours-{corpus_key}-{retriever_fingerprint(retriever)}-{rules[:FINGERPRINT_HEX_CHARS]}.npy"
    if path.exists():
        return np.load(path)
    neighbours = compute_neighbours(retriever, corpus, world, config, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A per-process partial file: ranks that compute the same neighbours never write into each other's file.
    partial_path = path.with_name(f"{path.name}.{os.getpid()}.partial.npy")
    np.save(partial_path, neighbours)
    partial_path.replace(path)
    return neighbours


class CorpusRetrieval:
    """The `RetrievalHook` of pretraining: the query's precomputed neighbours as caption+image documents.

    Plain arrays and configs only, so the hook pickles into DataLoader workers. The retrieved captions are drawn
    with the batch's rng (detailed or short, like the query's), so the retrieved text varies as the query's does.
    """

    def __init__(
        self, corpus: ImageCodeCorpus, neighbours: np.ndarray, k: int, world: WorldConfig,
        detailed_caption_fraction: float,
    ) -> None:
        if neighbours.shape != (len(corpus), neighbours.shape[1]) or neighbours.shape[1] < k:
            raise ValueError(f"neighbours {neighbours.shape} do not give {k} per document of {len(corpus)}")
        self.corpus = corpus
        self.neighbours = neighbours
        self.k = k
        self.world = world
        self.detailed_caption_fraction = detailed_caption_fraction

    def __call__(self, query: SceneDocument, rng: random.Random) -> list[Document]:
        chosen = [int(j) for j in self.neighbours[query.corpus_index, : self.k] if j != NO_NEIGHBOUR]
        documents = []
        for index in reversed(chosen):  # the most relevant document last, right before the query
            scene = self.corpus.scenes[index]
            describe = detailed_caption if rng.random() < self.detailed_caption_fraction else short_caption
            documents.append(retrieved_document(describe(scene, self.world, rng), self.corpus.image_codes(index)))
        return documents
