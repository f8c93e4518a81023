"""Edits: the scene an instruction should make, several samples and redraws of it, and what chooses among them.

An edit must change one thing and copy the rest, and the shapes model's direct samples often get one of the two
wrong. With several candidates (`num_candidates` > 1 in the edit's SamplingParams) an edit is decoded in three steps:

1. The plan: the source is captioned as the caption job captions (the checkpoint's caption defaults: several
   samples, the noisy channel chooses) and the instruction is applied to that caption symbolically
   (`parse_edit_instruction`, the world's edit grammar): the expected scene. None where the caption does not read
   or the instruction names no unique object of it.
2. The samples: the direct edits (three-stream guidance), and where the plan is known, the checkpoint's
   `edit_redraw` count of redraws: grounded prompts of the expected scene (each object with its box), decoded as
   grounded generation is. Why redraws: the shapes VQ's codes are not local, so a direct edit must redraw the scene
   from the source's codes anyway, and the model draws a known scene far more reliably from its grounded prompt.
3. The choice, over direct samples and redraws alike: with a retriever, its similarity of each candidate with the
   expected scene's canonical caption (`ExpectedCaptionScorer`); without one, the caption check (the first sample
   whose greedy caption is the expected scene, direct samples first, else the first direct sample). No plan: the
   first direct sample.

A redraw repaints what the plan says, not the source's pixels: in the shapes world a scene is its caption, and an
image whose caption does not read gets direct samples only; a plain request (`JobRequest.plain`) skips the policy.
Measured choices and their history: docs/model-history.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import parse_caption
from cm3leon.data.tasks import grounded_spec_of_scene, parse_edit_instruction
from cm3leon.data.world import Scene, WorldConfig
from cm3leon.decoding import SamplingParams, Scorer
from cm3leon.decoding.defaults import CAPTION, EDIT, EDIT_REDRAW
from cm3leon.decoding.rerank import no_rerank
from cm3leon.policies.shapes.caption_check import CaptionCheckScorer, expected_caption_scorer
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.decode import ImageSamples, caption_images, sample_image_outputs
from cm3leon.tasks.formats import TaskFormatter
from cm3leon.tokenizers.vocab import ImageCodes

# The source's caption is the plan every sample is judged by: one fixed seed, so one source and instruction always
# give one plan (the samples still vary with the request's seed).
PLAN_SEED = 0


@dataclass(frozen=True)
class EditSettings:
    """How an edit decodes: its direct samples, its redraws and how its source is read (a checkpoint's EDIT,
    EDIT_REDRAW and CAPTION defaults)."""

    direct: SamplingParams
    redraw: SamplingParams
    plan_caption: SamplingParams

    @classmethod
    def from_defaults(cls, defaults: Mapping[str, SamplingParams]) -> EditSettings:
        return cls(direct=defaults[EDIT], redraw=defaults[EDIT_REDRAW], plan_caption=defaults[CAPTION])

    @property
    def chooses(self) -> bool:
        """Several direct samples: the edit is planned, redrawn and chosen; one: decoded as is."""
        return self.direct.num_candidates > 1


@dataclass(frozen=True)
class EditPlan:
    """Per edit: its direct prompt, its expected scene and the grounded prompt that redraws it (None: unknown)."""

    prompts: list[list[int]]
    expected: list[Scene | None]
    redraw_prompts: list[list[int] | None]

    def expected_by_prompt(self) -> dict[tuple[int, ...], Scene | None]:
        """The expected scene of every prompt a candidate can come from (what the scorers are keyed by)."""
        keyed: dict[tuple[int, ...], Scene | None] = {}
        for prompt, redraw, scene in zip(self.prompts, self.redraw_prompts, self.expected, strict=True):
            keyed[tuple(prompt)] = scene
            if redraw is not None:
                keyed[tuple(redraw)] = scene
        return keyed


def expected_edits(
    checkpoint: ModelBundle, sources: Sequence[ImageCodes], instructions: Sequence[str],
    caption_params: SamplingParams, batch_size: int,
) -> list[Scene | None]:
    """Per edit: the scene its instruction makes of the model's caption of the source (decoded with
    `caption_params`)."""
    captions, _ = caption_images(checkpoint, sources, caption_params, batch_size, seed=PLAN_SEED)
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


def redraw_prompt(formatter: TaskFormatter, scene: Scene) -> list[int]:
    """The grounded-generation prompt that asks for `scene`: each object with its box, then the background."""
    return formatter.grounded(grounded_spec_of_scene(scene, formatter.world), None).prompt


def plan_edits(
    checkpoint: ModelBundle, prompts: Sequence[Sequence[int]], sources: Sequence[ImageCodes],
    instructions: Sequence[str], settings: EditSettings, batch_size: int,
) -> EditPlan:
    """The expected scene of each edit prompt (one per source image and instruction) and its redraw prompt."""
    expected = expected_edits(checkpoint, sources, instructions, settings.plan_caption, batch_size)
    formatter = TaskFormatter(checkpoint.vocab, checkpoint.world)
    redraws = [redraw_prompt(formatter, scene) if scene is not None else None for scene in expected]
    return EditPlan([list(p) for p in prompts], expected, redraws)


def edit_scorer(checkpoint: ModelBundle, plan: EditPlan, retriever: Retriever | None) -> Scorer:
    """What chooses among an edit's candidates, direct and redrawn: the retriever against the expected scene (the
    first direct sample where there is none), else the caption check."""
    keyed = plan.expected_by_prompt()
    if retriever is None:
        return CaptionCheckScorer(checkpoint, keyed)
    return expected_caption_scorer(checkpoint, retriever, list(keyed), list(keyed.values()), no_rerank)


def redraw_wins(direct_score: float, redraw_score: float | None) -> bool:
    """Whether an edit keeps its best redraw over its best direct sample: only a strictly better score (ties keep
    the direct sample, so the caption check's order stays direct samples first)."""
    return redraw_score is not None and redraw_score > direct_score


@dataclass(frozen=True)
class EditSamples:
    chosen: list[ImageCodes | None]  # per edit, the kept candidate (None: no whole image block)
    redrawn: list[bool]  # per edit, whether the kept candidate is a redraw
    direct: ImageSamples  # the direct samples, with the choice among them alone
    redraws: list[list[ImageCodes | None]]  # per edit, its redraws ([] without a plan)
    plan: EditPlan | None  # None: one direct sample, nothing planned


def sample_edits(
    checkpoint: ModelBundle, prompts: Sequence[Sequence[int]], sources: Sequence[ImageCodes],
    instructions: Sequence[str], settings: EditSettings, batch_size: int, seed: int, retriever: Retriever | None,
) -> EditSamples:
    """Edits decoded as the edit job decodes them (module docstring), batched; the direct samples of edit i are
    seeded as `sample_image_outputs` seeds request i, its redraws as it seeds the i-th planned edit."""
    if not settings.chooses:
        direct = sample_image_outputs(checkpoint, prompts, settings.direct, batch_size, seed)
        return EditSamples(direct.chosen, [False] * len(prompts), direct, [[] for _ in prompts], None)
    plan = plan_edits(checkpoint, prompts, sources, instructions, settings, batch_size)
    scorer = edit_scorer(checkpoint, plan, retriever)
    direct = sample_image_outputs(checkpoint, prompts, settings.direct, batch_size, seed, scorer)
    planned = [i for i, redraw in enumerate(plan.redraw_prompts) if redraw is not None]
    redraw_prompts = [plan.redraw_prompts[i] for i in planned]
    # Scored whatever their count: a single redraw is still compared with the direct samples.
    redrawn = sample_image_outputs(
        checkpoint, redraw_prompts, settings.redraw, batch_size, seed, scorer, score_single=True  # type: ignore[arg-type]
    )
    redraws: list[list[ImageCodes | None]] = [[] for _ in prompts]
    chosen, wins = list(direct.chosen), [False] * len(prompts)
    for row, i in enumerate(planned):
        redraws[i] = redrawn.candidates[row]
        if redraw_wins(direct.scores[i], redrawn.scores[row]):
            chosen[i], wins[i] = redrawn.chosen[row], True
    return EditSamples(chosen, wins, direct, redraws, plan)
