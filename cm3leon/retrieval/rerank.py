"""The retriever as the reranker of pooled candidates (CM3Leon reranks with CLIP; this is the same role).

`RetrieverScorer` is a `cm3leon.decoding.Scorer`: each image candidate is decoded to pixels by the VQ decoder and
scored by the retriever's text-image similarity (at the retriever's resolution) with the prompt's caption (the text
after the last image of the query document, which comes after any retrieved documents). Candidates of text
targets, and prompts without text, fall back to another scorer (by default the model's own likelihood, through
`generate`). `ExpectedCaptionScorer` scores against a caption the caller knows each request should show instead
(an edit's expected scene, the word scene a text-rendering request asks for): the prompt is an instruction there,
not a caption.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from cm3leon.decoding.params import GenerationRequest
from cm3leon.decoding.prompts import last_document
from cm3leon.decoding.rerank import Scorer
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.vocab import Vocabulary


def prompt_caption(vocab: Vocabulary, prompt_ids: Sequence[int]) -> str | None:
    """The text after the last image of the prompt's last document (the query), or None when there is none: a
    text->image caption, the caption after a structure-guided map, a grounded prompt's words without its boxes."""
    query = last_document(vocab, prompt_ids)
    image_positions = [index for index, token in enumerate(query) if token in vocab.image_ids]
    after_images = query[image_positions[-1] + 1 :] if image_positions else query
    text = vocab.decode_text(after_images).strip()  # special and location ids are skipped
    return text or None


class RetrieverScorer:
    """Text-image similarity of each image candidate to the prompt's caption (higher is better)."""

    def __init__(
        self, retriever: Retriever, vocab: Vocabulary, image_tokenizer: ImageTokenizer, fallback: Scorer
    ) -> None:
        self.retriever = retriever
        self.vocab = vocab
        self.image_tokenizer = image_tokenizer
        self.fallback = fallback

    def caption_of(self, request: GenerationRequest, prompt_ids: Sequence[int]) -> str | None:
        """The text the candidates are scored against (None: the fallback scores them)."""
        return prompt_caption(self.vocab, prompt_ids)

    def __call__(
        self, request: GenerationRequest, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]
    ) -> list[float]:
        caption = self.caption_of(request, prompt_ids)
        codes_per_image = self.vocab.codes_per_image
        whole = all(len(candidate) >= codes_per_image for candidate in candidates)
        if request.target != "image" or caption is None or not whole:
            return list(self.fallback(request, prompt_ids, candidates))
        codes = [self.vocab.decode_image(candidate[:codes_per_image]).codes for candidate in candidates]
        with torch.inference_mode():
            images = self.image_tokenizer.decode(torch.tensor(codes, dtype=torch.long))
        similarity: np.ndarray = self.retriever.similarity([caption], self._retriever_sized(np.asarray(images)))[0]
        return [float(score) for score in similarity]

    def _retriever_sized(self, images: np.ndarray) -> np.ndarray:
        """The VQ's images at the retriever's resolution (bicubic, as serving resizes image queries)."""
        size = self.retriever.config.image_size
        if images.shape[1:3] == (size, size):
            return images
        resample = Image.Resampling.BICUBIC
        return np.stack([np.asarray(Image.fromarray(image).resize((size, size), resample)) for image in images])


class ExpectedCaptionScorer(RetrieverScorer):
    """Text-image similarity of each image candidate to the caption its request is expected to show, keyed by the
    request's `prompt_ids` (a missing key or None: `fallback` scores the candidates).

    Why: the retriever was trained with near-miss negatives (a letter, a colour, a shape changed), so it tells such
    candidates apart better than the model's own caption check (`experiments/rules/` compares the rules on the
    same samples; the numbers are in docs/model-history.md)."""

    def __init__(
        self, retriever: Retriever, vocab: Vocabulary, image_tokenizer: ImageTokenizer,
        expected: Mapping[tuple[int, ...], str | None], fallback: Scorer,
    ) -> None:
        super().__init__(retriever, vocab, image_tokenizer, fallback)
        self.expected = expected

    def caption_of(self, request: GenerationRequest, prompt_ids: Sequence[int]) -> str | None:
        return self.expected.get(tuple(request.prompt_ids or ()))
