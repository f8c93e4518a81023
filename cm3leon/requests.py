"""What the job kinds' requests (`cm3leon.kinds`) are made of, and what the engine gives back: sampling options,
images, boxes, progress, results and errors.

Image inputs are `ImageRef` (an object-store key) on the serving side and uint8 arrays (H, W, 3) once the worker
has fetched them: the engine only accepts arrays. No torch here: the gateway builds them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

CaptionStyle = Literal["short", "detailed"]


@dataclass(frozen=True)
class ImageRef:
    """An image in the object store, not yet fetched."""

    key: str


ImageInput = ImageRef | np.ndarray


@dataclass(frozen=True)
class Sampling:
    """Per-request decoding overrides; None keeps the model's default for the task."""

    method: str | None = None  # "sample", "cfg", "cdk", "pooled"
    temperature: float | None = None
    top_p: float | None = None
    guidance_scale: float | None = None
    # Guided sampling only among tokens with p_cond >= this fraction of the largest p_cond (0: off).
    guidance_plausibility: float | None = None
    num_candidates: int | None = None
    seed: int | None = None
    # Documents retrieved from the memory as context; None: the kind's default (text->image: the paper's k = 2,
    # captioning: none).
    retrieved_k: int | None = None
    memory: str | None = None  # the retrieval memory (collection) to search; None: the engine's default


@dataclass(frozen=True)
class NormBox:
    """A box in normalised coordinates: 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1."""

    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class GroundedObject:
    description: str
    box: NormBox


@dataclass
class Progress:
    tokens_done: int
    tokens_total: int
    preview: np.ndarray | None = None  # uint8 (H, W, 3): the rows of codes done so far, decoded


@dataclass(frozen=True)
class RetrievedContext:
    doc_id: str
    score: float
    text: str | None
    has_text: bool
    has_image: bool


@dataclass
class EngineResult:
    images: list[np.ndarray] = field(default_factory=list)  # uint8 (H, W, 3)
    text: str = ""
    legend: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)  # segmentation classes
    retrieved: list[RetrievedContext] = field(default_factory=list)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seed: int = 0
    seconds: float = 0.0


class UnsupportedJobKind(Exception):
    """The loaded model cannot run this kind of job (it does not declare it, or no handler exists yet)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"job kind {kind!r} is not supported: {reason}")
        self.kind = kind


class JobCancelled(Exception):
    """The caller's cancellation check turned true between decode steps."""
