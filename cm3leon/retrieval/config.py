"""Configs of the retrieval components: the dual encoder's shape, its training, and the vector memory.

One dataclass per component, each with named presets: `tiny` (tests, seconds on CPU) and `shapes` (the demo
retriever for the 64x64 shapes world, trained on CPU in under 20 minutes).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

from cm3leon.presets import Presets

Distance = Literal["cosine", "dot"]
DISTANCES: tuple[str, ...] = ("cosine", "dot")


@dataclass(frozen=True)
class RetrieverConfig(Presets):
    """Shape of the CLIP-style dual encoder: a CNN over pixels and a transformer over BPE tokens, both
    projecting into one L2-normalised `embed_dim` space."""

    # --- image tower ---
    image_size: int = 64
    image_channels: int = 3
    # One stride-2 stage per entry (each halves the resolution): 64 -> 32 -> 16 -> 8 with three stages. The
    # final feature map is flattened, not pooled, so the embedding keeps *where* each object is: the world's
    # captions name positions, and a global pool would throw exactly that away.
    conv_channels: tuple[int, ...] = (16, 32, 64)
    # Stride-1 3x3 convs after each stage's stride-2 conv. None at full resolution: there a conv costs 4x
    # what it does one stage later, and the first stage only needs to find edges and colours.
    stage_depths: tuple[int, ...] = (0, 1, 1)
    # --- text tower ---
    # Set from the text tokenizer when a retriever is built (see `with_vocab_size`); the preset value is the
    # project's `shapes` BPE size.
    text_vocab_size: int = 512
    # Longest caption of the world (three objects, longest paraphrase) is 34 BPE tokens; longer text is cut.
    max_text_tokens: int = 48
    text_width: int = 96
    text_layers: int = 2
    text_heads: int = 4
    text_mlp_ratio: int = 2
    # --- shared space ---
    embed_dim: int = 128
    distance: Distance = "cosine"
    # CLIP's initial temperature 0.07, and its cap on the learned logit scale (100) against instability.
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(
            conv_channels=(8, 16, 16), stage_depths=(0, 0, 1), text_width=32, text_layers=1, text_heads=2, embed_dim=16
        ),
        "shapes": {},
    }

    def __post_init__(self) -> None:
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size {self.image_size} is not a multiple of {self.downsample_factor}")
        if len(self.stage_depths) != len(self.conv_channels):
            raise ValueError(f"stage_depths {self.stage_depths} needs one entry per stage {self.conv_channels}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        for name in ("text_vocab_size", "max_text_tokens", "text_width", "text_layers", "embed_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.conv_channels)

    @property
    def feature_grid(self) -> int:
        """Side of the image tower's final feature map."""
        return self.image_size // self.downsample_factor

    @property
    def init_logit_scale(self) -> float:
        return math.log(1.0 / self.init_temperature)

    def with_vocab_size(self, text_vocab_size: int) -> RetrieverConfig:
        return dataclasses.replace(self, text_vocab_size=text_vocab_size)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RetrieverConfig:
        raw: dict[str, Any] = json.loads(text)
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown retriever config fields: {sorted(unknown)}")
        # JSON has no tuples; restore them so a round-tripped frozen config compares equal.
        for name in ("conv_channels", "stage_depths"):
            if name in raw:
                raw[name] = tuple(raw[name])
        return cls(**raw)


@dataclass(frozen=True)
class RetrieverTrainingConfig(Presets):
    """Optimisation and data mix of the contrastive training. Presets: `tiny` (tests) and `shapes`."""

    # 128 pairs (with near misses and scene-aware targets) leave enough negatives and twice the steps of 256.
    batch_size: int = 128
    # The text tower's best rate in short probes; the image tower is not sensitive to it.
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.05
    # Linear warmup over this fraction of the run (of its steps, or of its time budget), so a short smoke run
    # and a full one both warm up and then decay fully.
    warmup_fraction: float = 0.05
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.98  # CLIP's beta2 for contrastive training
    grad_clip: float = 1.0
    # Data mix: a fraction of captions are short (colour + shape only, no positions or background); the rest
    # are detailed paraphrases. Text-rendering scenes in the proportion the decoder's corpus uses.
    short_caption_fraction: float = 0.2
    text_scene_fraction: float = 0.125
    # Fraction of each batch in (scene, one-attribute sibling) twos: the hard negatives (see `pairs.py`).
    near_miss_fraction: float = 0.5
    # bf16 autocast of the text tower, for CPUs with avx512_bf16 / AMX or GPUs. Off by default: on a CPU
    # without them bf16 is emulated and far slower than fp32.
    bf16_autocast: bool = False
    log_every: int = 10
    eval_every: int = 100
    eval_size: int = 256  # val-split pairs for the running recall@1
    checkpoint_every_seconds: float = 120.0
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(batch_size=16, log_every=1, eval_every=10, eval_size=32),
        "shapes": {},
    }


@dataclass(frozen=True)
class RetrievalRules:
    """Which documents a query retrieves (RA-CM3 / CM3Leon criteria, the paper's values): the memory applies them
    when serving, the training data when it precomputes each document's neighbours."""

    # Documents retrieved per query: the paper's k = 2.
    k: int = 2
    # Nearest neighbours fetched before the diversity and modality rules pick k of them.
    candidates: int = 32
    # A candidate whose similarity to the query, or to a document already taken, exceeds this is a
    # near-duplicate and is skipped (the paper's diversity rule, threshold 0.9).
    diversity_threshold: float = 0.9
    # Added to the relevance of documents that have both text and image, so at equal relevance they win (the
    # paper's modality criterion) while a far more relevant single-modality document still can.
    modality_bonus: float = 0.05
    # Fraction of query text tokens dropped when retrieving for a training sample (the paper's 20%).
    query_dropout: float = 0.2


@dataclass(frozen=True)
class MemoryConfig(RetrievalRules, Presets):
    """Where the vector memory lives and how it is searched (`RetrievalRules`).

    Location: `url` (or env `QDRANT_URL`, with `QDRANT_API_KEY`) selects a Qdrant server; otherwise the
    embedded local mode stores under `path`, or in RAM when `path` is ":memory:".
    """

    name: str = "shapes"
    path: str = "out/qdrant"
    url: str | None = None
    upsert_batch_size: int = 256
    # Object-store key template for images when the VQ codes are not stored inline (see `Memory`).
    image_key_template: str = "memory/{memory}/{doc_id}.png"

    def __post_init__(self) -> None:
        if self.k <= 0 or self.candidates < self.k:
            raise ValueError(f"need 0 < k <= candidates, got k={self.k}, candidates={self.candidates}")
        if not 0.0 <= self.query_dropout < 1.0:
            raise ValueError(f"query_dropout must lie in [0, 1), got {self.query_dropout}")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(name="tiny", path=":memory:", candidates=8, upsert_batch_size=16),
        "shapes": {},
    }
