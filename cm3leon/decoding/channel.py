"""Noisy-channel reranking of captions: keep the sampled caption from which the decoder best redraws the image.

Greedy captioning takes the most likely words one at a time, and its errors are binding errors (a shape given
its neighbour's colour) or under-described scenes (the world's short caption form names no size or position).
Both leave the caption a poor explanation of the image. CM3Leon models both directions of a captioned image in
one decoder, so the same model can score a caption candidate c of image x by the reverse direction, the
"channel" log p(x | c) of its text->image documents (`caption <break> IMAGE`), and add the forward ("direct")
log p(c | prompt) with a smaller weight: the channel term does most of the choosing, the direct term adds to it
(the shapes model's measurements are in docs/model-history.md).

Only text candidates of prompts that contain an image are scored this way; anything else goes to `fallback`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cm3leon.decoding.params import DEFAULT_SCORING_BATCH_SIZE, GenerationRequest
from cm3leon.decoding.prompts import document_prompt_ids, last_document
from cm3leon.decoding.rerank import LikelihoodScorer, ModelScorer, Scorer
from cm3leon.tokenizers.vocab import ImageCodes, Vocabulary

# Weight of log p(caption | image) beside log p(image | caption); chosen on the validation split.
DEFAULT_DIRECT_WEIGHT = 0.5
# The score of a candidate that is no caption at all: empty, or cut off before <eos> by the token budget.
NOT_A_CAPTION = float("-inf")


def query_image(vocab: Vocabulary, prompt_ids: Sequence[int]) -> ImageCodes | None:
    """The last image of the prompt's last document (after its last `<bos>`: retrieved documents come first)."""
    segments = vocab.decode_document(last_document(vocab, prompt_ids))
    images = [segment for segment in segments if isinstance(segment, ImageCodes)]
    return images[-1] if images else None


class ChannelScorer(ModelScorer):
    """log p(image | caption) + `direct_weight` * log p(caption | prompt) for each text candidate (higher is
    better); candidates that are not a complete caption score `NOT_A_CAPTION`. Identical candidates (common
    among samples) are scored once."""

    def __init__(
        self,
        model: nn.Module,
        vocab: Vocabulary,
        *,
        direct_weight: float = DEFAULT_DIRECT_WEIGHT,
        batch_size: int = DEFAULT_SCORING_BATCH_SIZE,
        fallback: Scorer | None = None,
    ) -> None:
        if direct_weight < 0:
            raise ValueError(f"direct_weight must be >= 0, got {direct_weight}")
        super().__init__(model, vocab, batch_size=batch_size)
        self.direct_weight = direct_weight
        self.fallback = fallback or LikelihoodScorer(model, vocab, batch_size=batch_size)

    def caption_of(self, candidate: Sequence[int]) -> str | None:
        """The caption a candidate spells, or None when it is empty or did not reach `<eos>`."""
        if not candidate or candidate[-1] != self.vocab.eos_id:
            return None
        text = self.vocab.decode_text(candidate).strip()
        return text or None

    def __call__(
        self, request: GenerationRequest, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]
    ) -> list[float]:
        image = query_image(self.vocab, prompt_ids)
        if request.target != "text" or image is None:
            return list(self.fallback(request, prompt_ids, candidates))
        unique: dict[tuple[int, ...], str] = {}
        for candidate in candidates:
            caption = self.caption_of(candidate)
            if caption is not None:
                unique.setdefault(tuple(candidate), caption)
        if not unique:
            return [NOT_A_CAPTION] * len(candidates)
        keys = list(unique)
        image_ids = self.vocab.encode_image(image.codes)
        captions = [document_prompt_ids(self.vocab, [unique[key]], "image") for key in keys]
        channel = self.log_likelihoods(captions, [image_ids] * len(keys))
        scores = channel
        if self.direct_weight:
            direct = self.log_likelihoods([prompt_ids] * len(keys), keys)
            scores = channel + self.direct_weight * direct
        by_key = dict(zip(keys, scores.tolist(), strict=True))
        return [by_key.get(tuple(candidate), NOT_A_CAPTION) for candidate in candidates]
