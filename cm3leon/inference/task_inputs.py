"""Serving requests -> the inputs the task formats (`cm3leon.tasks.formats`) take, without any world.

A request carries free text and normalised boxes; a format takes text, boxes in location bins and image codes.
`RequestReader` is the generic reading a model without a world serves with: text as given, boxes in the
vocabulary's location bins, the segmentation map as drawn. A model trained on a world reads requests in that
world's symbols instead (the shapes world's reader: `cm3leon.policies.shapes.inputs`), found by
`cm3leon.inference.policies.reader_for`. Readers refuse (ValueError naming the field) what they cannot express,
so the job fails with a clear INVALID_ARGUMENT instead of decoding a prompt the model never saw. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cm3leon.data.questions import QA, REASONING_KIND
from cm3leon.data.tasks import BinBox, PixelBox, bins_of
from cm3leon.kinds import GroundedGeneration, TextRendering, VisualQuestion
from cm3leon.requests import EngineResult, NormBox
from cm3leon.tasks.parsing import question_and_answer

# A float32 box edge meant to lie on a pixel edge lands within this many pixels of it (e.g. 21/64 * 64).
PIXEL_EPSILON = 1e-4
VQA_KIND = "vqa"  # the QA kind of a served question: only names the example, the prompt does not carry it
GroundedParts = tuple[list[tuple[str, BinBox]], str]  # each object's phrase and bins, then the prompt's tail


def pixel_box(box: NormBox, image_size: int, field: str = "box") -> PixelBox:
    """The pixels (end exclusive) a normalised box covers in the model's image, at least one pixel each way."""
    size = image_size
    x0, y0 = (min(size - 1, max(0, math.floor(v * size + PIXEL_EPSILON))) for v in (box.x0, box.y0))
    x1, y1 = (min(size, max(1, math.ceil(v * size - PIXEL_EPSILON))) for v in (box.x1, box.y1))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{field}: ({box.x0}, {box.y0}, {box.x1}, {box.y1}) covers no pixel of a {size}px image")
    return x0, y0, x1, y1


def question_of(request: VisualQuestion) -> QA:
    """The question as the format wants it; a question sent whole ("Question: ... Answer:") is unwrapped."""
    parsed = question_and_answer(request.question)
    question = parsed[0] if parsed is not None else " ".join(request.question.split())
    return QA(question, "", REASONING_KIND if request.explain else VQA_KIND)


def plain_text(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class RequestReader:
    """The generic reading of requests, for a model without a world: its images are `image_size` px and its
    vocabulary has `location_bins` bins per side."""

    image_size: int
    location_bins: int

    def grounded(self, request: GroundedGeneration) -> GroundedParts:
        """Each object's description as written with its box in location bins; the prompt (if any) after them."""
        objects = []
        for index, item in enumerate(request.objects):
            field = f"objects[{index}]"
            if not plain_text(item.description):
                raise ValueError(f"{field}.description: describe the object")
            box = pixel_box(item.box, self.image_size, f"{field}.box")
            objects.append((plain_text(item.description), bins_of(box, self.location_bins, self.image_size)))
        prompt = plain_text(request.prompt)
        return objects, f" {prompt}" if prompt else ""

    def text_instruction(self, request: TextRendering) -> str:
        """The request's text is the instruction."""
        return plain_text(request.text)

    def segmentation_result(self, greedy: EngineResult) -> EngineResult:
        """The map as the model drew it: without a world there is no legend to read classes by."""
        return greedy
