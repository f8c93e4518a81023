"""Edits checked against the model's own captions: several samples, the first that shows what the instruction asks.

An edit must change one thing and copy the rest, and the shapes model's samples often get one of the two wrong;
among 8 samples one is right far more often than the first (validation: some sample exact 0.64 of the time, the
first 0.355), but the model's own likelihood does not find it. Its captions can: the source image is captioned,
the instruction is applied to that caption symbolically (`parse_edit_instruction`, the world's edit grammar), and
each sampled output is captioned too; the first sample whose caption is that expected scene is kept, else the
first sample. Captions here are greedy (one per candidate image: the check's cost is one short caption per sample).

`num_candidates` > 1 in an edit's SamplingParams turns the check on (`EditCheckScorer` is then the candidate
scorer); one candidate decodes as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cm3leon.data.language import parse_caption
from cm3leon.data.tasks import parse_edit_instruction
from cm3leon.data.world import Scene, WorldConfig
from cm3leon.decoding import GenerationRequest, SamplingParams
from cm3leon.tasks.checkpoint import LoadedCheckpoint
from cm3leon.tasks.decode import caption_images
from cm3leon.tasks.parsing import image_output
from cm3leon.tokenizers.vocab import ImageCodes

# One greedy caption per candidate image: cheap, and on validation the check it gives accepted a wrong edit only
# 5% of the times it accepted one.
CHECK_CAPTION_PARAMS = SamplingParams.preset("greedy_text")
AGREES, DISAGREES = 1.0, 0.0


def expected_edits(
    checkpoint: LoadedCheckpoint, sources: Sequence[ImageCodes], instructions: Sequence[str], batch_size: int,
) -> list[Scene | None]:
    """Per edit: the scene its instruction makes of the model's caption of the source."""
    captions, _ = caption_images(checkpoint, sources, CHECK_CAPTION_PARAMS, batch_size, seed=0)
    return expected_scenes(captions, instructions, checkpoint.world)


def expected_scenes(captions: Sequence[str], instructions: Sequence[str], world: WorldConfig) -> list[Scene | None]:
    """Each instruction applied to its source's caption; None where the caption is unreadable or a word scene, or
    the instruction names no unique object of it."""
    expected: list[Scene | None] = []
    for caption, instruction in zip(captions, instructions, strict=True):
        scene = parse_caption(caption, world)
        valid = scene is not None and scene.word is None
        expected.append(parse_edit_instruction(instruction, scene, world) if valid else None)  # type: ignore[arg-type]
    return expected


Describer = Callable[[Sequence[ImageCodes]], list[str]]


class EditCheckScorer:
    """Scores each candidate output 1 where its caption (`describe`, default: the model's greedy caption) is the
    expected scene of its request (keyed by the request's `prompt_ids`), else 0; `generate` keeps the first best,
    so the first agreeing sample."""

    def __init__(
        self, checkpoint: LoadedCheckpoint, expected: dict[tuple[int, ...], Scene | None],
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


def edit_check_scorer(
    checkpoint: LoadedCheckpoint, prompts: Sequence[Sequence[int]], sources: Sequence[ImageCodes],
    instructions: Sequence[str], batch_size: int,
) -> EditCheckScorer:
    """The scorer for these edit prompts (one per source image and instruction)."""
    expected = expected_edits(checkpoint, sources, instructions, batch_size)
    return EditCheckScorer(checkpoint, {tuple(p): e for p, e in zip(prompts, expected, strict=True)})
