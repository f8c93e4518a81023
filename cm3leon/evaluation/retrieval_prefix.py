"""Retrieved documents for the text->image evaluation's "with retrieval" row: each test caption is the query
(text only, as a serving request would be), the memory picks k documents by the paper's rules, and the
serving layout (`cm3leon.inference.retrieval.with_context`) puts them before the prompt."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cm3leon.decoding import document_prompt_ids
from cm3leon.evaluation.t2i_task_eval import RetrievalPrefix
from cm3leon.inference.retrieval import with_context
from cm3leon.retrieval.config import MemoryConfig
from cm3leon.retrieval.documents import RetrievalDocument
from cm3leon.retrieval.memory import Memory
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tokenizers.vocab import Vocabulary

QUERY_ID = "eval-query-{index}"


def memory_prefix(
    memory: Memory, retriever: Retriever, vocab: Vocabulary, max_seq_len: int, k: int | None = None
) -> RetrievalPrefix:
    """Captions -> the ids of their retrieved documents, as many as fit before the prompt and its image."""

    def prefix(captions: Sequence[str]) -> list[list[int]]:
        queries = [RetrievalDocument(QUERY_ID.format(index=i), text=c) for i, c in enumerate(captions)]
        found = memory.retrieve(retriever, queries, k=k)
        prefixes = []
        for caption, documents in zip(captions, found, strict=True):
            prompt = document_prompt_ids(vocab, [caption], "image")
            budget = max_seq_len - vocab.codes_per_image - 1  # room for the image block and its <eos>
            ids, _ = with_context(vocab, documents, prompt, budget)
            prefixes.append(ids[: len(ids) - len(prompt)])
        return prefixes

    return prefix


def open_memory(path: Path, name: str, retriever: Retriever) -> Memory:
    """The embedded Qdrant memory at `path` (as `cm3leon corpus build --path` writes it)."""
    return Memory.for_retriever(MemoryConfig.preset("shapes", name=name, path=str(path)), retriever)
