"""The retriever's inference API: embed texts, images and documents into the shared space; save and load.

A directory written by `save_pretrained` stands alone:

    DIR/retriever_config.json   the dual encoder's shape (`RetrieverConfig`)
    DIR/model.safetensors       its weights
    DIR/tokenizer.json          the BPE text tokenizer it was trained with

Document embeddings follow RA-CM3 / CM3Leon: a document's text and image are encoded separately, each is
L2-normalised, the two are averaged and the mean is re-normalised (a single-modality document uses its one
part). Queries are embedded the same way, so maximum inner product search compares like with like.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from cm3leon.retrieval.config import RetrieverConfig
from cm3leon.retrieval.documents import RetrievalDocument
from cm3leon.retrieval.encoders import DualEncoder, pixels_to_input
from cm3leon.tokenizers.text import TextTokenizer

CONFIG_FILE = "retriever_config.json"
WEIGHTS_FILE = "model.safetensors"
# Rows per forward pass when embedding many items: bounds memory, not results.
EMBED_BATCH_SIZE = 256


def drop_tokens(ids: list[int], fraction: float, rng: random.Random) -> list[int]:
    """Query dropout: each token is dropped with probability `fraction`, keeping at least one."""
    kept = [token for token in ids if rng.random() >= fraction]
    return kept if kept or not ids else [rng.choice(ids)]


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


class Retriever:
    """A trained dual encoder and its tokenizer. Every `embed_*` returns float32 L2-normalised rows."""

    def __init__(self, model: DualEncoder, tokenizer: TextTokenizer, device: torch.device | str = "cpu") -> None:
        if model.config.text_vocab_size != tokenizer.size:
            raise ValueError(
                f"retriever text_vocab_size {model.config.text_vocab_size} != tokenizer size {tokenizer.size}"
            )
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)

    @classmethod
    def build(cls, config: RetrieverConfig, tokenizer: TextTokenizer, device: torch.device | str = "cpu") -> Retriever:
        """A freshly initialised retriever whose text tower fits `tokenizer`."""
        return cls(DualEncoder(config.with_vocab_size(tokenizer.size)), tokenizer, device)

    @property
    def config(self) -> RetrieverConfig:
        return self.model.config

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    # ----- persistence -----

    def save_pretrained(self, directory: Path | str) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(self.config.to_json())
        save_model(self.model, str(directory / WEIGHTS_FILE))
        self.tokenizer.save(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: Path | str, device: torch.device | str = "cpu") -> Retriever:
        directory = Path(directory)
        config = RetrieverConfig.from_json((directory / CONFIG_FILE).read_text())
        model = DualEncoder(config)
        load_model(model, str(directory / WEIGHTS_FILE), device=str(device))
        return cls(model.eval(), TextTokenizer.load(directory), device)

    # ----- inputs -----

    def text_batch(
        self, texts: Sequence[str], query_dropout: float = 0.0, rng: random.Random | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids (B, T), padding (B, T) True where padded); text past `max_text_tokens` is cut."""
        encoded = self.tokenizer.encode_batch(texts)
        if query_dropout > 0.0:
            rng = rng if rng is not None else random.Random()
            encoded = [drop_tokens(ids, query_dropout, rng) for ids in encoded]
        limit = self.config.max_text_tokens
        encoded = [ids[:limit] for ids in encoded]
        length = max((len(ids) for ids in encoded), default=0)
        token_ids = torch.zeros(len(encoded), length, dtype=torch.long)
        padding = torch.ones(len(encoded), length, dtype=torch.bool)
        for row, ids in enumerate(encoded):
            token_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            padding[row, : len(ids)] = False
        return token_ids.to(self.device), padding.to(self.device)

    def pixel_batch(self, images: np.ndarray) -> torch.Tensor:
        images = np.asarray(images)
        expected = (self.config.image_size, self.config.image_size, self.config.image_channels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(
                f"expected uint8 images (N, {', '.join(map(str, expected))}), got {images.dtype} {images.shape}"
            )
        return pixels_to_input(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))

    # ----- embeddings -----

    @torch.inference_mode()
    def embed_texts(
        self, texts: Sequence[str], query_dropout: float = 0.0, rng: random.Random | None = None
    ) -> np.ndarray:
        """(N, embed_dim) float32, L2-normalised. `query_dropout` drops that fraction of tokens (training queries)."""
        self.model.eval()
        chunks = [np.zeros((0, self.embed_dim), dtype=np.float32)]
        for start in range(0, len(texts), EMBED_BATCH_SIZE):
            token_ids, padding = self.text_batch(texts[start : start + EMBED_BATCH_SIZE], query_dropout, rng)
            chunks.append(self.model.encode_texts(token_ids, padding).cpu().numpy())
        return np.concatenate(chunks)

    @torch.inference_mode()
    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> (N, embed_dim) float32, L2-normalised."""
        self.model.eval()
        chunks = [np.zeros((0, self.embed_dim), dtype=np.float32)]
        for start in range(0, len(images), EMBED_BATCH_SIZE):
            pixels = self.pixel_batch(images[start : start + EMBED_BATCH_SIZE])
            chunks.append(self.model.encode_images(pixels).cpu().numpy())
        return np.concatenate(chunks)

    def embed_documents(
        self, documents: Sequence[RetrievalDocument], query_dropout: float = 0.0, rng: random.Random | None = None
    ) -> np.ndarray:
        """(N, embed_dim): normalise(mean(normalised text part, normalised image part)); one part if only one.

        Use the same call for queries; `query_dropout` applies to the text part only.
        """
        with_text = [i for i, doc in enumerate(documents) if doc.text is not None]
        with_image = [i for i, doc in enumerate(documents) if doc.image is not None]
        total = np.zeros((len(documents), self.embed_dim), dtype=np.float32)
        if with_text:
            texts = [documents[i].text or "" for i in with_text]
            total[with_text] += self.embed_texts(texts, query_dropout, rng)
        if with_image:
            total[with_image] += self.embed_images(np.stack([documents[i].image for i in with_image]))  # type: ignore[misc]
        # Dividing by the part count is a no-op before re-normalising; it is kept for the stated definition.
        parts = np.array([doc.has_text + doc.has_image for doc in documents], dtype=np.float32)[:, None]
        return normalise_rows(total / np.maximum(parts, 1.0))

    def similarity(self, texts: Sequence[str], images: np.ndarray) -> np.ndarray:
        """(len(texts), len(images)) text-image cosine similarities, for reranking generated images."""
        return self.embed_texts(texts) @ self.embed_images(images).T
