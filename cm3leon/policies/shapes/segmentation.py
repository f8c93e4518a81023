"""Segmentation maps that agree with the model's own caption of the image.

The shapes model's segmentation errors are mostly whole objects drawn in the wrong class, while its captions name
the shapes of a scene right far more often; so one skill checks the other. The map is decoded greedily; where its
objects (connected regions of one class, each placed in the grid cell of its centre) are not the shapes the caption
names in the cells it names, `num_candidates` maps are sampled at `temperature` and the first that agrees is kept;
where none does, or the caption names no shapes (a word scene, an unreadable caption), the greedy map stands.
Places are checked as well as shapes: a sample with the right shapes in the wrong cells must not pass. The
agreement check is the candidate scorer (`AgreementScorer`), so sampling and choosing use `generate`'s reranking.

The caption is decoded with the checkpoint's caption defaults (several samples reranked by the noisy channel);
`SegmentationParams` holds both settings. `segment_images` does it all (the evaluation); `check_maps` is the check
alone, for greedy maps decoded elsewhere (the server decodes them with progressive previews). Measured effects:
docs/model-history.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import parse_caption
from cm3leon.data.render import segmentation_classes
from cm3leon.data.world import WorldConfig
from cm3leon.decoding import CancelCheck, GenerationRequest, ProgressCallback, SamplingParams, no_rerank
from cm3leon.policies.shapes.caption_check import AGREES, DISAGREES
from cm3leon.tasks.decode import SEGMENTATION_PARAMS, caption_images, decode_codes, request_seed
from cm3leon.tasks.parsing import image_output, segmentation_map
from cm3leon.tokenizers.vocab import ImageCodes

# A region smaller than this share of the smallest object's box is a speck of stray colour, not an object.
MIN_REGION_SHARE_OF_SMALLEST_OBJECT = 0.1


@dataclass(frozen=True)
class SegmentationParams:
    """`maps.num_candidates` > 1 turns the caption check on; the greedy map is always decoded first."""

    maps: SamplingParams
    caption: SamplingParams

    @property
    def checks_caption(self) -> bool:
        return self.maps.num_candidates > 1

    def __post_init__(self) -> None:
        if self.checks_caption and self.maps.temperature <= 0:
            raise ValueError("segmentation: resampled maps need a temperature > 0 (greedy maps are all the same)")


@dataclass
class SegmentationRun:
    maps: list[np.ndarray]  # per image, (H, W) class ids: the chosen map
    greedy_maps: list[np.ndarray]
    captions: list[str | None]  # None where the caption check was off
    resampled: list[bool]  # the greedy map disagreed with a readable caption, so maps were sampled
    agreed: list[bool | None]  # the chosen map agrees with the caption (None: nothing to agree with)
    generated_tokens: int


def min_region_pixels(world: WorldConfig) -> int:
    smallest_side = min(world.size_fraction.values()) * world.cell_size
    return max(1, round(MIN_REGION_SHARE_OF_SMALLEST_OBJECT * smallest_side**2))


# An object as the check compares it: (grid cell, shape).
PlacedShape = tuple[int, str]


def region_objects(classes: np.ndarray, world: WorldConfig) -> Counter[PlacedShape]:
    """The objects a class map shows: connected regions of a shape's class, specks aside, each in the cell of its
    centre (a region split in two counts twice, so a torn object disagrees with the caption too)."""
    names, least = segmentation_classes(world), min_region_pixels(world)
    objects: Counter[PlacedShape] = Counter()
    for index, name in enumerate(names):
        if name not in world.shapes:
            continue
        mask = classes == index
        labels, found = ndimage.label(mask)
        if not found:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        kept = [region for region in range(1, found + 1) if sizes[region - 1] >= least]
        for y, x in ndimage.center_of_mass(mask, labels, kept):
            objects[(world.cell_of_pixel(x, y), name)] += 1
    return objects


def caption_objects(caption: str, world: WorldConfig) -> Counter[PlacedShape] | None:
    """The shapes a caption names in their cells; None when it names none (unreadable, or a word scene)."""
    scene = parse_caption(caption, world)
    if scene is None or scene.word is not None or not scene.objects:
        return None
    return Counter((obj.cell, obj.shape) for obj in scene.objects)


class AgreementScorer:
    """Scores candidate maps 1 where their objects are the placed shapes expected for the request (keyed by its
    `prompt_ids`), else 0; `generate` keeps the first best, so the first agreeing sample."""

    def __init__(
        self,
        expected: dict[tuple[int, ...], Counter[PlacedShape]],
        classes_of: Callable[[Sequence[int]], np.ndarray],
        world: WorldConfig,
    ) -> None:
        self.expected, self.classes_of, self.world = expected, classes_of, world

    def __call__(
        self, request: GenerationRequest, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]
    ) -> list[float]:
        want = self.expected[tuple(request.prompt_ids or ())]
        return [AGREES if region_objects(self.classes_of(c), self.world) == want else DISAGREES for c in candidates]


@dataclass
class MapDecoder:
    """Decodes segmentation prompts on one checkpoint: request i seeded by `request_seed(seed, i)`."""

    checkpoint: ModelBundle
    prompts: Sequence[Sequence[int]]
    batch_size: int
    seed: int
    progress: ProgressCallback | None = None
    should_cancel: CancelCheck | None = None

    def classes_of(self, ids: Sequence[int]) -> np.ndarray:
        picture = decode_codes(self.checkpoint, [image_output(ids, self.checkpoint.vocab)])[0]
        return segmentation_map(picture, self.checkpoint.world)

    def run(self, indices: Sequence[int], sampling: SamplingParams, scorer: AgreementScorer | None) -> list[list[int]]:
        outputs: list[list[int]] = []
        for first in range(0, len(indices), self.batch_size):
            requests = [
                GenerationRequest(
                    prompt_ids=list(self.prompts[i]),
                    target="image",
                    params=sampling.replace(seed=request_seed(self.seed, i)),
                )
                for i in indices[first : first + self.batch_size]
            ]
            results = self.checkpoint.generate(
                requests, scorer=scorer or no_rerank, progress=self.progress, should_cancel=self.should_cancel
            )
            outputs += [result.token_ids for result in results]
        return outputs


def segment_images(
    checkpoint: ModelBundle,
    prompts: Sequence[Sequence[int]],
    images: Sequence[ImageCodes],
    params: SegmentationParams,
    batch_size: int,
    seed: int,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    captions: Sequence[str] | None = None,
) -> SegmentationRun:
    """Per segmentation prompt (the map's `<break>` last) of image `images[i]`: the greedy map, then the caption
    check (`check_maps`)."""
    decoder = MapDecoder(checkpoint, prompts, batch_size, seed, progress, should_cancel)
    greedy_ids = decoder.run(range(len(prompts)), SEGMENTATION_PARAMS, None)
    greedy = [decoder.classes_of(ids) for ids in greedy_ids]
    run = check_maps(decoder, images, greedy, params, captions)
    run.generated_tokens += sum(len(ids) for ids in greedy_ids)
    return run


def check_maps(
    decoder: MapDecoder,
    images: Sequence[ImageCodes],
    greedy: Sequence[np.ndarray],
    params: SegmentationParams,
    captions: Sequence[str] | None = None,
) -> SegmentationRun:
    """The caption check of greedy class maps already decoded (the server decodes them with previews): reads
    `captions` where the caller has them, else the model's own (`caption_images`); `generated_tokens` counts only
    the check's own tokens."""
    count = len(greedy)
    run = SegmentationRun(list(greedy), list(greedy), [None] * count, [False] * count, [None] * count, 0)
    if not params.checks_caption:
        return run
    checkpoint, world = decoder.checkpoint, decoder.checkpoint.world
    if captions is None:
        captions, run.generated_tokens = caption_images(
            checkpoint,
            images,
            params.caption,
            decoder.batch_size,
            decoder.seed,
            decoder.progress,
            decoder.should_cancel,
        )
    run.captions = list(captions)
    expected = [caption_objects(caption, world) for caption in captions]
    for i, want in enumerate(expected):
        if want is not None:
            run.agreed[i] = region_objects(greedy[i], world) == want
    redo = [i for i, agreed in enumerate(run.agreed) if agreed is False]
    wanted = {tuple(decoder.prompts[i]): expected[i] for i in redo}
    scorer = AgreementScorer(wanted, decoder.classes_of, world)  # type: ignore[arg-type]
    for i, ids in zip(redo, decoder.run(redo, params.maps, scorer), strict=True):
        run.resampled[i] = True
        run.generated_tokens += len(ids) * params.maps.num_candidates
        sampled = decoder.classes_of(ids)
        if region_objects(sampled, world) == expected[i]:
            run.maps[i], run.agreed[i] = sampled, True
    return run
