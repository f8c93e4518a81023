"""Image outputs checked against the model's own reading of them: several samples, the first whose caption is the
scene the request asks for.

The shapes model's image samples are often wrong in a way its captions see (an edit that changed the wrong object,
a word with a wrong letter), and among several samples one is right far more often than the first, while the
model's likelihood of its own samples does not tell which. `CaptionCheckScorer` captions each candidate greedily,
parses the caption with the world's grammar and scores 1 where it is the expected scene, else 0; `generate` keeps
the first best, so the first agreeing sample (the first sample when none agrees). What differs per task is only
where the expected scene comes from: editing applies the instruction to the source's caption
(`cm3leon.policies.shapes.edit_check`); text rendering asks for a known word scene (`text_render_check_scorer`).

Text rendering's check is graded: where no candidate is read back exactly, the one whose expected caption the model
finds likeliest is kept instead of the first. Measured on validation (stage 14, n = 200, 8 candidates): some
candidate draws the word 0.735 of the time, the exact check kept a right one 0.530, the graded check 0.565 (the
likelihood alone, without the greedy reading, 0.570, with a trial variant of this scorer that was not kept).
Editing's check stays exact: its misses are the samples' (some candidate right 0.58, kept 0.475).

Where a retriever is loaded it takes part (`text_render_scorer`; `policies.shapes.edit_check.edit_scorer`): CM3Leon's
CLIP reranking, here against the scene the request should show rather than the prompt. Edit candidates are ranked
by the retriever's similarity to the expected scene's caption (validation, n = 200: 0.525 / 0.580 exact on seeds
1 / 0, against 0.475 / 0.505 for the caption check). Word candidates are ranked by the model's mean per-token
log-probability of the asked-for caption plus `READING_RETRIEVER_WEIGHT` times that similarity: on the same
validation samples (seeds 0 / 1, 8 candidates) the graded check kept a right word 0.565 / 0.545 of the time, the
similarity alone 0.635 / 0.620, the sum 0.660 / 0.635; with 16 candidates (the shipped default since) 0.575 /
0.590, 0.680 / 0.655 and 0.710 / 0.705 (`scripts/text_render_check_rules.py`). Neither decodes a caption per
candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import detailed_caption, parse_caption
from cm3leon.data.world import Scene
from cm3leon.decoding import GenerationRequest, SamplingParams, Scorer
from cm3leon.decoding.rerank import WeightedSum, continuation_log_likelihoods, no_rerank
from cm3leon.retrieval.rerank import ExpectedCaptionScorer
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.decode import caption_images
from cm3leon.tasks.formats import TaskFormatter
from cm3leon.tasks.parsing import image_output
from cm3leon.tokenizers.vocab import ImageCodes

# One greedy caption per candidate image: cheap, and on validation the edit check it gives accepted a wrong edit
# only 5% of the times it accepted one.
CHECK_CAPTION_PARAMS = SamplingParams.preset("greedy_text")
AGREES, DISAGREES = 1.0, 0.0
# Text rendering with a retriever: how much the retriever's cosine similarity (in [-1, 1]) counts against the
# model's mean per-token log-probability of the asked-for caption. Of 1, 5 and 20, 5 kept the most right words on
# validation (or tied) in all four comparisons (seeds 0 and 1, 8 and 16 candidates; module docstring).
READING_RETRIEVER_WEIGHT = 5.0

Describer = Callable[[Sequence[ImageCodes]], list[str]]


class CaptionCheckScorer:
    """Scores each candidate output 1 where its caption (`describe`, default: the model's greedy caption) is the
    expected scene of its request (keyed by the request's `prompt_ids`; None: nothing can agree), else 0; `graded`:
    else the likelihood of the expected scene's caption given the candidate, in (0, 1)."""

    def __init__(
        self, checkpoint: ModelBundle, expected: Mapping[tuple[int, ...], Scene | None],
        describe: Describer | None = None, graded: bool = False,
    ) -> None:
        self.checkpoint, self.expected = checkpoint, expected
        self.describe = describe or self._greedy_captions
        # Built once: every graded call formats caption documents for its candidates.
        self.formatter = TaskFormatter(checkpoint.vocab, checkpoint.world) if graded else None

    def _greedy_captions(self, images: Sequence[ImageCodes]) -> list[str]:
        return caption_images(self.checkpoint, images, CHECK_CAPTION_PARAMS, len(images), seed=0)[0]

    def __call__(
        self, request: GenerationRequest, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]
    ) -> list[float]:
        want = self.expected.get(tuple(request.prompt_ids or ()))
        codes = [image_output(ids, self.checkpoint.vocab) for ids in candidates]
        readable = [i for i, c in enumerate(codes) if c is not None]
        scores = [DISAGREES] * len(candidates)
        if want is None or not readable:
            return scores
        captions = self.describe([codes[i] for i in readable])  # type: ignore[misc]
        for i, caption in zip(readable, captions, strict=True):
            scene = parse_caption(caption, self.checkpoint.world)
            scores[i] = AGREES if scene is not None and scene.key() == want.key() else DISAGREES
        if self.formatter is not None:
            # The per-token probability (geometric mean, in (0, 1)) of the expected caption: a reading one letter
            # off still finds the asked-for word likely, so a right sample the exact check missed can outrank wrong
            # ones (it stays below AGREES, so an agreeing sample still wins).
            disagreeing = [i for i in readable if scores[i] == DISAGREES]
            log_probs = expected_caption_log_probs(
                self.checkpoint, self.formatter, [codes[i] for i in disagreeing], want  # type: ignore[misc]
            )
            for i, log_prob in zip(disagreeing, log_probs, strict=True):
                scores[i] = min(math.exp(log_prob), math.nextafter(AGREES, DISAGREES))
        return scores


def expected_caption_log_probs(
    checkpoint: ModelBundle, formatter: TaskFormatter, images: Sequence[ImageCodes], want: Scene
) -> list[float]:
    """Per image, the model's mean per-token log-probability of the expected scene's canonical caption given it:
    how well the model's reading of the image fits what was asked for, even where its greedy reading is off."""
    if not images:
        return []
    caption = detailed_caption(want, checkpoint.world)
    examples = [formatter.caption(image, caption) for image in images]
    totals = continuation_log_likelihoods(
        checkpoint.model, checkpoint.vocab, [e.prompt for e in examples], [e.output for e in examples]
    )
    return [float(total) / len(e.output) for total, e in zip(totals, examples, strict=True)]


class ExpectedCaptionLikelihoodScorer:
    """Each candidate's `expected_caption_log_probs` for its request's expected scene (keyed by the request's
    `prompt_ids`); -inf for a candidate without a whole image, 0 for every candidate where none is expected."""

    def __init__(self, checkpoint: ModelBundle, expected: Mapping[tuple[int, ...], Scene | None]) -> None:
        self.checkpoint, self.expected = checkpoint, expected
        self.formatter = TaskFormatter(checkpoint.vocab, checkpoint.world)

    def __call__(
        self, request: GenerationRequest, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]
    ) -> list[float]:
        want = self.expected.get(tuple(request.prompt_ids or ()))
        if want is None:
            return [0.0] * len(candidates)
        codes = [image_output(ids, self.checkpoint.vocab) for ids in candidates]
        readable = [i for i, c in enumerate(codes) if c is not None]
        scores = [-math.inf] * len(candidates)
        log_probs = expected_caption_log_probs(
            self.checkpoint, self.formatter, [codes[i] for i in readable], want  # type: ignore[misc]
        )
        for i, log_prob in zip(readable, log_probs, strict=True):
            scores[i] = log_prob
        return scores


def text_render_check_scorer(
    checkpoint: ModelBundle, prompts: Sequence[Sequence[int]], words: Sequence[Scene],
    describe: Describer | None = None, graded: bool = True,
) -> CaptionCheckScorer:
    """The check for text-rendering prompts: a candidate agrees when the model reads back the word scene asked for
    (word, colour and background; the reading is learned from caption documents of word images); `graded`: where
    none agrees, the one whose caption the model finds likeliest is kept (see `CaptionCheckScorer`)."""
    if any(not scene.is_text for scene in words):
        raise ValueError("text_render_check_scorer needs word scenes")
    expected = {tuple(p): s for p, s in zip(prompts, words, strict=True)}
    return CaptionCheckScorer(checkpoint, expected, describe, graded)


def expected_caption_scorer(
    checkpoint: ModelBundle, retriever: Retriever, prompts: Sequence[Sequence[int]],
    expected: Sequence[Scene | None], fallback: Scorer,
) -> ExpectedCaptionScorer:
    """The retriever's similarity of each candidate to its prompt's expected scene, written as that scene's
    canonical detailed caption (the form every paraphrase the retriever learned from shares); `fallback` scores a
    prompt whose expected scene is unknown."""
    captions = {
        tuple(p): detailed_caption(scene, checkpoint.world) if scene is not None else None
        for p, scene in zip(prompts, expected, strict=True)
    }
    return ExpectedCaptionScorer(retriever, checkpoint.vocab, checkpoint.image_tokenizer, captions, fallback)


def text_render_scorer(
    checkpoint: ModelBundle, prompts: Sequence[Sequence[int]], words: Sequence[Scene],
    retriever: Retriever | None,
) -> Scorer:
    """What chooses among text-rendering candidates: with a retriever, the model's mean per-token log-probability of
    the asked-for word scene's caption plus `READING_RETRIEVER_WEIGHT` times the retriever's similarity with it
    (module docstring); without one, the model's graded reading check."""
    if retriever is None:
        return text_render_check_scorer(checkpoint, prompts, words)
    if any(not scene.is_text for scene in words):
        raise ValueError("text_render_scorer needs word scenes")
    reading = ExpectedCaptionLikelihoodScorer(checkpoint, {tuple(p): s for p, s in zip(prompts, words, strict=True)})
    similarity = expected_caption_scorer(checkpoint, retriever, prompts, words, no_rerank)
    return WeightedSum(((1.0, reading), (READING_RETRIEVER_WEIGHT, similarity)))
