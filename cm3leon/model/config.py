"""Shape and initialisation constants of the decoder-only transformer, with named presets.

The `350m`, `760m` and `7b` presets are the paper's sizes (CM3Leon, Yu et al. 2023: 24 layers d 1024, 24 layers
d 1536, 32 layers d 4096; context 4096). `tiny` is for tests and `shapes` for the procedural shapes world, whose
image tokenizer gives 8 x 8 = 64 codes per image: three caption+image documents (two retrieved + the query) fit
in 640 positions with room for the longer instruction formats.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

from cm3leon.presets import Presets

PositionEncoding = Literal["learned", "rope"]


@dataclass(frozen=True)
class DecoderConfig(Presets):
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    max_seq_len: int
    # "learned" is the paper's (OPT-style absolute positions); "rope" is offered for length experiments.
    position_encoding: PositionEncoding = "learned"
    rope_base: float = 10_000.0
    norm_eps: float = 1e-5
    # Paper init: truncated normal std 0.006 everywhere, output projections zero, positions std 0.0002.
    init_std: float = 0.006
    position_init_std: float = 0.0002
    zero_init_output_projections: bool = True
    # OPT ties the output projection to the token embedding; it also saves vocab_size x d_model parameters.
    tie_embeddings: bool = True

    # Sizes only; vocab_size comes from the Vocabulary at build time.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(d_model=64, n_layers=2, n_heads=4, ffn_dim=256, max_seq_len=256),
        "shapes": dict(d_model=256, n_layers=6, n_heads=8, ffn_dim=1024, max_seq_len=640),
        "350m": dict(d_model=1024, n_layers=24, n_heads=16, ffn_dim=4096, max_seq_len=4096),
        "760m": dict(d_model=1536, n_layers=24, n_heads=24, ffn_dim=6144, max_seq_len=4096),
        "7b": dict(d_model=4096, n_layers=32, n_heads=32, ffn_dim=16384, max_seq_len=4096),
    }

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.position_encoding not in ("learned", "rope"):
            raise ValueError(f"position_encoding must be 'learned' or 'rope', got {self.position_encoding!r}")
        if self.position_encoding == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got {self.head_dim}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def preset(cls, name: str, /, vocab_size: int, **overrides: Any) -> DecoderConfig:
        """A named size for a given vocabulary; `overrides` replace any field (e.g. max_seq_len=1024)."""
        return super().preset(name, vocab_size=vocab_size, **overrides)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DecoderConfig:
        raw = json.loads(text)
        unknown = set(raw) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown decoder config fields: {sorted(unknown)}")
        return cls(**raw)
