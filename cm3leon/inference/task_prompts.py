"""Prompts of the instruction-tuned job kinds: a request -> the prompt ids its training format builds
(`cm3leon.tasks.formats`), fed what the model's request reader makes of the request's text and boxes
(`task_inputs`: generic, or the model's world's when it has one; `cm3leon.inference.policies.reader_for`).

So a prompt here is the training prompt of the same case, id for id (tests/serving/test_task_prompts.py checks each
kind), and a model without a world builds every prompt from its vocabulary and image size alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cm3leon.inference.policies import reader_for
from cm3leon.inference.task_inputs import pixel_box, question_of
from cm3leon.kinds import Edit, GroundedGeneration, Infill, Segmentation, StructureGuided, TextRendering, VisualQuestion
from cm3leon.requests import ImageInput
from cm3leon.tasks.infill import span_lengths
from cm3leon.tokenizers.vocab import ImageCodes

if TYPE_CHECKING:
    from cm3leon.inference.engine import Engine


def image_codes(engine: Engine, image: ImageInput) -> ImageCodes:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"the engine takes image arrays; fetch {image!r} first")
    return ImageCodes.of(engine.bundle.encode_image(image))


def visual_question_prompt(engine: Engine, request: VisualQuestion) -> list[int]:
    fmt = engine.formatter
    return fmt.vqa(image_codes(engine, request.image), question_of(request), with_answer=False).prompt


def edit_prompt(engine: Engine, request: Edit, source: ImageCodes | None = None) -> list[int]:
    """`source`: the request image's codes when the caller already has them (the caption check reads them too)."""
    fmt, source = engine.formatter, source or image_codes(engine, request.image)
    return fmt.edit_instruction(request.instruction.strip(), source, None).prompt


def segmentation_prompt(engine: Engine, request: Segmentation, codes: ImageCodes | None = None) -> list[int]:
    """`codes`: the request image's codes when the caller already has them (the caption check reads them too)."""
    return engine.formatter.segmentation(codes or image_codes(engine, request.image), None).prompt


def structure_prompt(engine: Engine, request: StructureGuided) -> list[int]:
    fmt, codes = engine.formatter, image_codes(engine, request.segmentation_map)
    return fmt.seg2img(codes, request.caption.strip(), None).prompt


def grounded_prompt(engine: Engine, request: GroundedGeneration) -> list[int]:
    return engine.formatter.grounded_objects(*reader_for(engine.bundle).grounded(request), None).prompt


def text_rendering_prompt(engine: Engine, request: TextRendering) -> list[int]:
    instruction = reader_for(engine.bundle).text_instruction(request)
    return engine.formatter.text_render_instruction(instruction, None).prompt


def infill_prompt(engine: Engine, codes: ImageCodes, request: Infill, index: int) -> tuple[list[int], list[int]]:
    """(prompt, span lengths) of region `index` hidden in `codes`, with the request's text as the caption."""
    field, size = f"regions[{index}]", engine.bundle.image_size
    region = pixel_box(request.regions[index], size, field)
    try:
        lengths = span_lengths(region, size, engine.bundle.vocab)
    except ValueError as error:  # a region the sentinel format cannot hold
        raise ValueError(f"{field}: {error}") from error
    return engine.formatter.infill(codes, region, request.text.strip() or None).prompt, lengths
