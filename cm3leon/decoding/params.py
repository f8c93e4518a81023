"""Request, parameter and result types of the decoding pipeline.

Defaults and presets follow CM3Leon (Yu et al. 2023): CFG scale swept 1..7 in the paper (3 is its
structure-guided setting and our default), editing with text scale 7.5 and image scale 1.5, and pooling half
TopP+CFG with half CD-K samples, 8 per prompt. CD-K's alpha = 0.1 is contrastive decoding's usual value
(Li et al. 2022); the brief gives no k, so k = 5 is our choice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from PIL import Image

from cm3leon.presets import Presets
from cm3leon.tokenizers.vocab import Document, Segment

Method = Literal["sample", "cfg", "cdk", "pooled"]
Target = Literal["image", "text"]
# What one candidate was decoded with ("pooled" splits its candidates between "cfg" and "cdk").
CandidateMethod = Literal["sample", "cfg", "cdk"]
METHODS: tuple[str, ...] = ("sample", "cfg", "cdk", "pooled")
TARGETS: tuple[str, ...] = ("image", "text")


GUIDED_PLAUSIBILITY = 0.1  # the presets' SamplingParams.guidance_plausibility (see SamplingParams.preset)
# Guided presets sample among plausible tokens only (GUIDED_PLAUSIBILITY): on a small, well-trained model, plain
# CFG at the paper's scales turns the gap between two tiny probabilities into a large score.
_GUIDED: dict[str, Any] = dict(top_p=0.9, guidance_plausibility=GUIDED_PLAUSIBILITY)


class GenerationCancelled(Exception):
    """Raised between decode steps when the caller's `should_cancel()` returned True."""


@dataclass(frozen=True)
class SamplingParams(Presets):
    method: Method = "cfg"
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int = 0  # 0 disables top-k
    top_p: float = 1.0  # 1 disables top-p
    guidance_scale: float = 3.0  # the text (condition) scale a: uncond + a * (cond - uncond)
    image_guidance_scale: float | None = None  # set -> three-stream (editing) guidance
    guide_text_tokens: bool = True  # False: CFG / CD-K only inside image blocks, text positions use cond
    cdk_alpha: float = 0.1
    cdk_k: int = 5
    # Guided (CFG) sampling only among tokens the conditional stream finds plausible, p_cond(t) >= this times the
    # largest p_cond (0: off). uncond + a * (cond - uncond) turns the gap between two tiny probabilities into a
    # large score; on a strong model that draws stray codes (blotches) at a >= 3. CD-K's candidate rule with k=1.
    guidance_plausibility: float = 0.0
    # Image targets: added to the score of the prompt's last image's code at the position being written (editing:
    # the source image), so what the instruction does not touch tends to be copied (0: off). See SourceCopyPrior.
    source_copy_bias: float = 0.0
    num_candidates: int = 1
    max_new_tokens: int = 64  # text targets only; an image target is always exactly one image block
    seed: int | None = None  # None: a fresh random seed (reported in the result)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "text_to_image": dict(method="cfg", guidance_scale=3.0, **_GUIDED),
        "pooled": dict(method="pooled", guidance_scale=3.0, num_candidates=8, **_GUIDED),
        "edit": dict(method="cfg", guidance_scale=7.5, image_guidance_scale=1.5, **_GUIDED),
        "structure_guided": dict(method="cfg", guidance_scale=3.0, **_GUIDED),
        # Room for a worked VQA answer (a 3-object description, then "so the answer is X": up to 38 tokens with
        # `<eos>` in the shapes world); decoding stops at `<eos>`, so short answers cost no more.
        "greedy_text": dict(method="sample", temperature=0.0, max_new_tokens=64),
        # One right class per pixel: greedy (see policies.shapes.segmentation for its caption-checked variant).
        "segmentation": dict(method="sample", temperature=0.0),
    }

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if not 0 < self.cdk_alpha <= 1:
            raise ValueError(f"cdk_alpha must lie in (0, 1], got {self.cdk_alpha}")
        if not 0 <= self.guidance_plausibility <= 1:
            raise ValueError(f"guidance_plausibility must lie in [0, 1], got {self.guidance_plausibility}")
        if self.source_copy_bias < 0:
            raise ValueError(f"source_copy_bias must be >= 0, got {self.source_copy_bias}")
        if self.cdk_k < 1:
            raise ValueError(f"cdk_k must be >= 1, got {self.cdk_k}")
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def uses_three_streams(self) -> bool:
        return self.image_guidance_scale is not None and self.method in ("cfg", "pooled")

    def candidate_methods(self) -> list[CandidateMethod]:
        """Per candidate: "pooled" gives the first half (rounded up) to TopP+CFG and the rest to CD-K."""
        if self.method == "pooled":
            cfg_count = (self.num_candidates + 1) // 2
            return ["cfg"] * cfg_count + ["cdk"] * (self.num_candidates - cfg_count)
        return [self.method] * self.num_candidates  # type: ignore[list-item]

    def replace(self, **changes: Any) -> SamplingParams:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to continue. Give `prompt` (a Document) or `prompt_ids` (used verbatim), not both.

    A Document prompt is encoded without `<eos>`; for an image target a `<break>` is appended (the modality
    switch before the image block), for a text target only when the document ends with an image. Ids prompts
    must already end where generation starts (e.g. with `<break>` before an image, or `<infill>`).
    """

    prompt: Document | None = None
    target: Target = "image"
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt_ids: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.prompt_ids is None):
            raise ValueError("give exactly one of prompt (a Document) and prompt_ids")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")


# Rows per forward pass when scoring candidates by likelihood (memory: rows x length x vocab logits).
DEFAULT_SCORING_BATCH_SIZE = 16


@dataclass(frozen=True)
class DecodingConfig:
    # Checking "all rows finished" reads a flag back from the device (a sync): only every this many steps.
    finish_check_interval: int = 8
    scoring_batch_size: int = DEFAULT_SCORING_BATCH_SIZE


@dataclass
class CandidateResult:
    token_ids: list[int]  # generated ids, including the final <eos>/<break> when one was produced
    method: CandidateMethod
    score: float


@dataclass
class GenerationResult:
    token_ids: list[int]  # the best candidate's generated ids
    segments: list[Segment]  # vocab.decode_document(token_ids)
    text: str  # the text of the generated text tokens ("" for an image)
    images: list[Image.Image]  # decoded ImageCodes segments, when an image_decoder was given
    score: float
    best_index: int
    candidates: list[CandidateResult]
    seed: int
