"""Image outputs checked against what the request asks for: several samples, and the one the model's reading or the
retriever finds closest to the expected scene.

The shapes model's image samples are often wrong in a way its captions see (an edit that changed the wrong object,
a word with a wrong letter), and among several samples one is right far more often than the first, while the
model's likelihood of its own samples does not tell which. `CaptionCheckScorer` captions each candidate greedily,
parses the caption with the world's grammar and scores 1 where it is the expected scene, else 0; `generate` keeps
the first best. What differs per task is only where the expected scene comes from: editing applies the instruction
to the source's caption (`edit_check`); text rendering asks for a known word scene (`text_render_check_scorer`),
and its check is graded (where no candidate reads back exactly, the likeliest expected caption wins).

Where a retriever is loaded it takes part, as CM3Leon's CLIP reranking, here against the scene the request should
show rather than the prompt: edit candidates by its similarity to the expected scene's caption; word candidates by
the model's mean per-token log-probability of the asked-for caption plus `READING_RETRIEVER_WEIGHT` times that
similarity. Neither decodes a caption per candidate. The validation comparisons behind each rule:
docs/model-history.md and experiments/rules/.
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

# One greedy caption per candidate image: cheap, and rarely accepts a wrong edit (docs/model-history.md).
CHECK_CAPTION_PARAMS = SamplingParams.preset("greedy_text")
AGREES, DISAGREES = 1.0, 0.0
# Text rendering with a retriever: how much the retriever's cosine similarity (in [-1, 1]) counts against the
# model's mean per-token log-probability of the asked-for caption (chosen on validation: docs/model-history.md).
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
