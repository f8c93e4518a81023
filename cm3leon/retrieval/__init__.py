"""Retrieval: the CLIP-style dual encoder, its contrastive training, and the Qdrant memory searched with the
RA-CM3 / CM3Leon criteria (relevance, modality, diversity, query dropout).

    config.py      RetrieverConfig, RetrieverTrainingConfig, MemoryConfig (presets tiny, shapes)
    encoders.py    the image tower (CNN), the text tower (transformer over BPE ids), DualEncoder
    contrastive.py the symmetric InfoNCE loss with scene-aware targets (duplicates are positives)
    pairs.py       caption/image pairs and near misses drawn from the world
    train.py       the resumable trainer (`cm3leon train retriever`)
    retriever.py   Retriever: embed texts, images and documents; save/load
    documents.py   RetrievalDocument and the world's document stream
    search.py      choosing k of the nearest neighbours (pure rules)
    memory.py      Memory: the Qdrant collection (imports qdrant_client, hence grpc: import it only to use it)
    corpus.py      building a memory (`cm3leon corpus build`)
"""

from cm3leon.retrieval.config import MemoryConfig, RetrieverConfig, RetrieverTrainingConfig

__all__ = ["MemoryConfig", "RetrieverConfig", "RetrieverTrainingConfig"]
