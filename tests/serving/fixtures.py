"""Tiny real artifacts for the serving tests: a model directory (untrained tiny decoder, seeded tiny VQ,
world-trained BPE), an untrained tiny retriever and a Qdrant local-mode memory of world documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from cm3leon.bundle import ModelBundle
from cm3leon.checkpoint import save_checkpoint
from cm3leon.data.world import World, WorldConfig
from cm3leon.decoding import SamplingParams
from cm3leon.retrieval.config import MemoryConfig, RetrieverConfig
from cm3leon.retrieval.corpus import build_memory
from cm3leon.retrieval.documents import world_documents
from cm3leon.retrieval.memory import Memory
from cm3leon.retrieval.retriever import Retriever
from services.stack import Stack
from tests.pretrain_helpers import tiny_image_tokenizer, tiny_model, tiny_vocabulary

API_KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
MEMORY_NAME = "tiny"
MEMORY_DOCUMENTS = 24


def build_tiny_model_dir(directory: Path) -> Path:
    """A complete model directory (cm3leon.checkpoint) of the `tiny` presets; a few seconds on CPU."""
    image_tokenizer = tiny_image_tokenizer()
    vocab = tiny_vocabulary(image_tokenizer)
    vq_dir = image_tokenizer.save_pretrained(directory / "vq_source")
    save_checkpoint(directory / "model", tiny_model(vocab), vocab, vq_dir)
    return directory / "model"


def build_tiny_memory(model_dir: Path, directory: Path) -> tuple[Path, Path]:
    """(retriever dir, Qdrant local-mode path) holding MEMORY_DOCUMENTS world documents with inline codes."""
    from cm3leon.tokenizers.image import ImageTokenizer
    from cm3leon.tokenizers.text import TextTokenizer

    torch.manual_seed(0)
    tokenizer = TextTokenizer.load(model_dir)
    retriever = Retriever.build(RetrieverConfig.preset("tiny"), tokenizer)
    retriever_dir = retriever.save_pretrained(directory / "retriever")
    image_tokenizer = ImageTokenizer.from_pretrained(model_dir / "vq")
    world = World(WorldConfig.preset("tiny"))
    # Diversity off: an untrained encoder maps documents close together, the rule would keep only one.
    config = MemoryConfig.preset("tiny", name=MEMORY_NAME, path=str(directory / "qdrant"), diversity_threshold=1.01)
    memory = Memory.for_retriever(config, retriever)
    try:
        documents = world_documents(world, MEMORY_DOCUMENTS, seed=0)
        build_memory(memory, retriever, documents, image_tokenizer=image_tokenizer, progress_bar=False)
    finally:
        memory.close()
    return retriever_dir, directory / "qdrant"


def spans_of(stack: Stack) -> list[dict]:
    """The spans every process of the stack exported so far (the JSON-lines file exporter)."""
    path: Path = stack.spans_path  # type: ignore[attr-defined]
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def record_decoded_params(monkeypatch: pytest.MonkeyPatch) -> list[SamplingParams]:
    """The SamplingParams of every request the engine's handlers hand to the decoder from now on (the real
    `ModelBundle.generate` still runs: this only watches what the handlers chose)."""
    seen: list[SamplingParams] = []
    real = ModelBundle.generate

    def watched(bundle: ModelBundle, requests: Any, **kwargs: Any) -> Any:
        seen.extend(request.params for request in requests)
        return real(bundle, requests, **kwargs)

    monkeypatch.setattr(ModelBundle, "generate", watched)
    return seen


def record_scorers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The candidate scorer (None: `generate`'s default) of every decode the engine's handlers run from now on
    (the real `generate` runs: this only watches what chooses among the candidates)."""
    scorers: list[Any] = []
    real = ModelBundle.generate

    def watched(bundle: ModelBundle, requests: Any, **kwargs: Any) -> Any:
        scorers.append(kwargs.get("scorer"))
        return real(bundle, requests, **kwargs)

    monkeypatch.setattr(ModelBundle, "generate", watched)
    return scorers


def record_decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """(requests, results) of every decode the engine's handlers run from now on (the real `generate` runs)."""
    decoded: list[tuple[Any, Any]] = []
    real = ModelBundle.generate

    def watched(bundle: ModelBundle, requests: Any, **kwargs: Any) -> Any:
        results = real(bundle, requests, **kwargs)
        decoded.append((requests, results))
        return results

    monkeypatch.setattr(ModelBundle, "generate", watched)
    return decoded
