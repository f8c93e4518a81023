"""Edits checked against the model's own captions: several samples, the first that shows what the instruction asks.

An edit must change one thing and copy the rest, and the shapes model's samples often get one of the two wrong;
among 8 samples one is right far more often than the first (validation: some sample exact 0.64 of the time, the
first 0.355), but the model's own likelihood does not find it. Its captions can: the source image is captioned,
the instruction is applied to that caption symbolically (`parse_edit_instruction`, the world's edit grammar), and
each sampled output is captioned too; the first sample whose caption is that expected scene is kept, else the
first sample. Captions here are greedy (one per candidate image: the check's cost is one short caption per sample).

`num_candidates` > 1 in an edit's SamplingParams turns the check on (`cm3leon.tasks.caption_check`'s scorer is
then the candidate scorer); one candidate decodes as before. With a retriever (`edit_scorer`), the expected scene is
found the same way but the candidates are ranked by the retriever's similarity to its caption rather than by the
model's captions of them (validation, n = 200, the same samples for both: 0.525 / 0.580 exact against 0.475 /
0.505 on seeds 1 / 0, `scripts/edit_check_rules.py`; it also skips a caption decoded per candidate).
"""

from __future__ import annotations

from collections.abc import Sequence

from cm3leon.data.language import parse_caption
from cm3leon.data.tasks import parse_edit_instruction
from cm3leon.data.world import Scene, WorldConfig
from cm3leon.decoding import Scorer
from cm3leon.decoding.rerank import no_rerank
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.caption_check import CHECK_CAPTION_PARAMS, CaptionCheckScorer, expected_caption_scorer
from cm3leon.tasks.checkpoint import LoadedCheckpoint
from cm3leon.tasks.decode import caption_images
from cm3leon.tokenizers.vocab import ImageCodes


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


def edit_check_scorer(
    checkpoint: LoadedCheckpoint, prompts: Sequence[Sequence[int]], sources: Sequence[ImageCodes],
    instructions: Sequence[str], batch_size: int,
) -> CaptionCheckScorer:
    """The scorer for these edit prompts (one per source image and instruction)."""
    expected = expected_edits(checkpoint, sources, instructions, batch_size)
    return CaptionCheckScorer(checkpoint, {tuple(p): e for p, e in zip(prompts, expected, strict=True)})


def edit_scorer(
    checkpoint: LoadedCheckpoint, prompts: Sequence[Sequence[int]], sources: Sequence[ImageCodes],
    instructions: Sequence[str], batch_size: int, retriever: Retriever | None,
) -> Scorer:
    """What chooses among edit candidates: the retriever against the expected scene where there is one (the first
    sample where the source's caption gives none, as the caption check does), else the caption check."""
    if retriever is None:
        return edit_check_scorer(checkpoint, prompts, sources, instructions, batch_size)
    expected = expected_edits(checkpoint, sources, instructions, batch_size)
    return expected_caption_scorer(checkpoint, retriever, prompts, expected, no_rerank)
