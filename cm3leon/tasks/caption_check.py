"""Image outputs checked against the model's own reading of them: several samples, the first whose caption is the
scene the request asks for.

The shapes model's image samples are often wrong in a way its captions see (an edit that changed the wrong object,
a word with a wrong letter), and among several samples one is right far more often than the first, while the
model's likelihood of its own samples does not tell which. `CaptionCheckScorer` captions each candidate greedily,
parses the caption with the world's grammar and scores 1 where it is the expected scene, else 0; `generate` keeps
the first best, so the first agreeing sample (the first sample when none agrees). What differs per task is only
where the expected scene comes from: editing applies the instruction to the source's caption
(`cm3leon.tasks.edit_check`); text rendering asks for a known word scene (`text_render_check_scorer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from cm3leon.data.language import parse_caption
from cm3leon.data.world import Scene
from cm3leon.decoding import GenerationRequest, SamplingParams
from cm3leon.tasks.checkpoint import LoadedCheckpoint
from cm3leon.tasks.decode import caption_images
from cm3leon.tasks.parsing import image_output
from cm3leon.tokenizers.vocab import ImageCodes

# One greedy caption per candidate image: cheap, and on validation the edit check it gives accepted a wrong edit
# only 5% of the times it accepted one.
CHECK_CAPTION_PARAMS = SamplingParams.preset("greedy_text")
AGREES, DISAGREES = 1.0, 0.0

Describer = Callable[[Sequence[ImageCodes]], list[str]]


class CaptionCheckScorer:
    """Scores each candidate output 1 where its caption (`describe`, default: the model's greedy caption) is the
    expected scene of its request (keyed by the request's `prompt_ids`; None: nothing can agree), else 0."""

    def __init__(
        self, checkpoint: LoadedCheckpoint, expected: Mapping[tuple[int, ...], Scene | None],
        describe: Describer | None = None,
    ) -> None:
        self.checkpoint, self.expected = checkpoint, expected
        self.describe = describe or self._greedy_captions

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
        return scores


def text_render_check_scorer(
    checkpoint: LoadedCheckpoint, prompts: Sequence[Sequence[int]], words: Sequence[Scene],
    describe: Describer | None = None,
) -> CaptionCheckScorer:
    """The check for text-rendering prompts: a candidate agrees when the model reads back the word scene asked for
    (word, colour and background; the reading is learned from caption documents of word images)."""
    if any(not scene.is_text for scene in words):
        raise ValueError("text_render_check_scorer needs word scenes")
    return CaptionCheckScorer(checkpoint, {tuple(p): s for p, s in zip(prompts, words, strict=True)}, describe)
