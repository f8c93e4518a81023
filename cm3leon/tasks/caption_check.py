"""Image outputs checked against the model's own reading of them: several samples, the first whose caption is the
scene the request asks for.

The shapes model's image samples are often wrong in a way its captions see (an edit that changed the wrong object,
a word with a wrong letter), and among several samples one is right far more often than the first, while the
model's likelihood of its own samples does not tell which. `CaptionCheckScorer` captions each candidate greedily,
parses the caption with the world's grammar and scores 1 where it is the expected scene, else 0; `generate` keeps
the first best, so the first agreeing sample (the first sample when none agrees). What differs per task is only
where the expected scene comes from: editing applies the instruction to the source's caption
(`cm3leon.tasks.edit_check`); text rendering asks for a known word scene (`text_render_check_scorer`).

Text rendering's check is graded: where no candidate is read back exactly, the one whose expected caption the model
finds likeliest is kept instead of the first. Measured on validation (stage 14, n = 200, 8 candidates): some
candidate draws the word 0.735 of the time, the exact check kept a right one 0.530, the graded check 0.565 (the
likelihood alone, without the greedy reading, 0.570, with a trial variant of this scorer that was not kept).
Editing's check stays exact: its misses are the samples' (some candidate right 0.58, kept 0.475).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from cm3leon.data.language import detailed_caption, parse_caption
from cm3leon.data.world import Scene
from cm3leon.decoding import GenerationRequest, SamplingParams
from cm3leon.decoding.rerank import continuation_log_likelihoods
from cm3leon.tasks.checkpoint import LoadedCheckpoint
from cm3leon.tasks.decode import caption_images
from cm3leon.tasks.formats import TaskFormatter
from cm3leon.tasks.parsing import image_output
from cm3leon.tokenizers.vocab import ImageCodes

# One greedy caption per candidate image: cheap, and on validation the edit check it gives accepted a wrong edit
# only 5% of the times it accepted one.
CHECK_CAPTION_PARAMS = SamplingParams.preset("greedy_text")
AGREES, DISAGREES = 1.0, 0.0

Describer = Callable[[Sequence[ImageCodes]], list[str]]


class CaptionCheckScorer:
    """Scores each candidate output 1 where its caption (`describe`, default: the model's greedy caption) is the
    expected scene of its request (keyed by the request's `prompt_ids`; None: nothing can agree), else 0; `graded`:
    else the likelihood of the expected scene's caption given the candidate, in (0, 1)."""

    def __init__(
        self, checkpoint: LoadedCheckpoint, expected: Mapping[tuple[int, ...], Scene | None],
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
            disagreeing = [i for i in readable if scores[i] == DISAGREES]
            likelihoods = self._caption_likelihoods(
                self.formatter, [codes[i] for i in disagreeing], want  # type: ignore[misc]
            )
            for i, likelihood in zip(disagreeing, likelihoods, strict=True):
                scores[i] = likelihood
        return scores

    def _caption_likelihoods(
        self, formatter: TaskFormatter, images: Sequence[ImageCodes], want: Scene
    ) -> list[float]:
        """Per image, the model's per-token probability (geometric mean, in (0, 1)) of the expected scene's
        canonical caption: a reading one letter off still finds the asked-for word likely, so a right sample the
        exact check missed can outrank wrong ones (it stays below AGREES, so an agreeing sample still wins)."""
        if not images:
            return []
        checkpoint = self.checkpoint
        caption = detailed_caption(want, checkpoint.world)
        examples = [formatter.caption(image, caption) for image in images]
        totals = continuation_log_likelihoods(
            checkpoint.model, checkpoint.vocab, [e.prompt for e in examples], [e.output for e in examples]
        )
        return [min(math.exp(float(total) / len(e.output)), math.nextafter(AGREES, DISAGREES))
                for total, e in zip(totals, examples, strict=True)]


def text_render_check_scorer(
    checkpoint: LoadedCheckpoint, prompts: Sequence[Sequence[int]], words: Sequence[Scene],
    describe: Describer | None = None, graded: bool = True,
) -> CaptionCheckScorer:
    """The check for text-rendering prompts: a candidate agrees when the model reads back the word scene asked for
    (word, colour and background; the reading is learned from caption documents of word images); `graded`: where
    none agrees, the one whose caption the model finds likeliest is kept (see `CaptionCheckScorer`)."""
    if any(not scene.is_text for scene in words):
        raise ValueError("text_render_check_scorer needs word scenes")
    expected = {tuple(p): s for p, s in zip(prompts, words, strict=True)}
    return CaptionCheckScorer(checkpoint, expected, describe, graded)
