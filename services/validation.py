"""Validation of submitted requests, with messages that name the field (INVALID_ARGUMENT).

Checks every kind's text lengths, parameter ranges and boxes, and decodes inline images (PNG/JPEG only, size,
dimensions, pixel count) into normalised PNG bytes, so the worker only ever reads well-formed images.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from cm3leon_client.api import common_pb2, jobs_pb2
from services.errors import InvalidArgument
from services.objectstore import REFERENCEABLE_KEY, png_bytes
from services.settings import GatewaySettings

ALLOWED_FORMATS = ("PNG", "JPEG")
# Ranges of the sampling parameters (beyond them decoding degenerates or the batch explodes).
TEMPERATURE_RANGE = (0.0, 5.0)
GUIDANCE_RANGE = (0.0, 20.0)
COPY_BIAS_RANGE = (0.0, 20.0)  # a logit bonus; a large one copies the source whatever the instruction says
PLAUSIBILITY_RANGE = (0.0, 1.0)  # a fraction of the conditional stream's largest probability
CANDIDATES_RANGE = (1, 16)
RETRIEVED_K_RANGE = (0, 8)
MEMORY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
NUM_IMAGES_RANGE = (1, 4)
MAX_REQUEST_ID_CHARS = 128
MAX_OBJECTS = 9  # grounded generation: one per cell of the shapes world's 3x3 grid, and a sane bound elsewhere
MAX_REGIONS = 9
# Kinds the model was trained to read retrieved documents for (the instruction-tuned kinds never saw any).
RETRIEVAL_KINDS = frozenset({"text_to_image", "caption"})
# Infilling fills CM3 spans greedily: of the sampling options only the seed applies.
GREEDY_ONLY_OPTIONS = ("temperature", "top_p", "guidance_scale", "guidance_plausibility", "num_candidates")


@dataclass
class ImageField:
    """An image input of a request: its field path and the ImageInput message (rewritten to a key later)."""

    path: str
    message: common_pb2.ImageInput


def check_text(path: str, text: str, settings: GatewaySettings, required: bool = True) -> None:
    if required and not text.strip():
        raise InvalidArgument(path, "must not be empty")
    if len(text) > settings.max_prompt_chars:
        raise InvalidArgument(path, f"is {len(text)} characters long; the limit is {settings.max_prompt_chars}")


def check_range(path: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise InvalidArgument(path, f"must lie in {bracket}{low}, {high}], got {value}")


def check_sampling(path: str, sampling: jobs_pb2.Sampling) -> None:
    if sampling.method not in jobs_pb2.DecodingMethod.values():
        raise InvalidArgument(f"{path}.method", f"unknown decoding method {sampling.method}")
    if sampling.HasField("temperature"):
        check_range(f"{path}.temperature", sampling.temperature, *TEMPERATURE_RANGE)
    if sampling.HasField("top_p"):
        check_range(f"{path}.top_p", sampling.top_p, 0.0, 1.0, low_open=True)
    if sampling.HasField("guidance_scale"):
        check_range(f"{path}.guidance_scale", sampling.guidance_scale, *GUIDANCE_RANGE)
    if sampling.HasField("guidance_plausibility"):
        check_range(f"{path}.guidance_plausibility", sampling.guidance_plausibility, *PLAUSIBILITY_RANGE)
    if sampling.HasField("num_candidates"):
        check_range(f"{path}.num_candidates", sampling.num_candidates, *CANDIDATES_RANGE)
    if sampling.HasField("retrieved_k"):
        check_range(f"{path}.retrieved_k", sampling.retrieved_k, *RETRIEVED_K_RANGE)
    if sampling.memory and not MEMORY_NAME.fullmatch(sampling.memory):
        raise InvalidArgument(f"{path}.memory", "a memory name is 1 to 64 letters, digits, '.', '_' or '-'")


def check_box(path: str, box: common_pb2.Box) -> None:
    for name in ("x0", "y0", "x1", "y1"):
        check_range(f"{path}.{name}", getattr(box, name), 0.0, 1.0)
    if box.x0 >= box.x1 or box.y0 >= box.y1:
        raise InvalidArgument(path, f"needs x0 < x1 and y0 < y1, got ({box.x0}, {box.y0}, {box.x1}, {box.y1})")


def check_image_field(path: str, image: common_pb2.ImageInput) -> ImageField:
    source = image.WhichOneof("source")
    if source is None:
        raise InvalidArgument(path, "an image is required (inline data or object_key)")
    if source == "object_key" and not REFERENCEABLE_KEY.match(image.object_key):
        raise InvalidArgument(f"{path}.object_key", "not the key of an input or output of one of your jobs")
    return ImageField(path, image)


def normalise_image(path: str, data: bytes, settings: GatewaySettings) -> bytes:
    """Inline bytes -> PNG bytes of an RGB image, after the format, size and pixel checks."""
    if len(data) > settings.max_image_bytes:
        raise InvalidArgument(path, f"is {len(data)} bytes; the limit is {settings.max_image_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as picture:
            if picture.format not in ALLOWED_FORMATS:
                raise InvalidArgument(path, f"format {picture.format} is not accepted; send PNG or JPEG")
            width, height = picture.size
            if width * height > settings.max_image_pixels:
                raise InvalidArgument(path, f"has {width}x{height} pixels; the limit is {settings.max_image_pixels}")
            if min(width, height) < settings.min_image_side:
                raise InvalidArgument(path, f"is {width}x{height}; each side must be >= {settings.min_image_side}")
            picture.load()
            return png_bytes(picture)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise InvalidArgument(path, f"is not a readable PNG or JPEG image ({error})") from error


def validate_request(request: jobs_pb2.JobRequest, settings: GatewaySettings) -> tuple[str, list[ImageField]]:
    """(the kind, its image inputs) after every check; raises InvalidArgument naming the first bad field."""
    kind = request.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("request", "choose one job kind (text_to_image, caption, ...)")
    path = f"request.{kind}"
    body = getattr(request, kind)
    images: list[ImageField] = []
    if hasattr(body, "sampling"):
        check_sampling(f"{path}.sampling", body.sampling)
        if kind not in RETRIEVAL_KINDS and body.sampling.retrieved_k:
            raise InvalidArgument(
                f"{path}.sampling.retrieved_k", f"{kind} does not use retrieved context (only text_to_image, caption)"
            )
    if kind == "text_to_image":
        check_text(f"{path}.prompt", body.prompt, settings)
        if body.num_images:
            check_range(f"{path}.num_images", body.num_images, *NUM_IMAGES_RANGE)
    elif kind == "caption":
        images.append(check_image_field(f"{path}.image", body.image))
        if body.style not in jobs_pb2.CaptionStyle.values():
            raise InvalidArgument(f"{path}.style", f"unknown caption style {body.style}")
    elif kind == "visual_question":
        images.append(check_image_field(f"{path}.image", body.image))
        check_text(f"{path}.question", body.question, settings)
    elif kind == "edit":
        images.append(check_image_field(f"{path}.image", body.image))
        check_text(f"{path}.instruction", body.instruction, settings)
        for name in ("text_guidance_scale", "image_guidance_scale"):
            if body.HasField(name):
                check_range(f"{path}.{name}", getattr(body, name), *GUIDANCE_RANGE)
        if body.HasField("source_copy_bias"):
            check_range(f"{path}.source_copy_bias", body.source_copy_bias, *COPY_BIAS_RANGE)
    elif kind == "infill":
        images.append(check_image_field(f"{path}.image", body.image))
        if not 1 <= len(body.regions) <= MAX_REGIONS:
            raise InvalidArgument(f"{path}.regions", f"give 1 to {MAX_REGIONS} regions, got {len(body.regions)}")
        for index, box in enumerate(body.regions):
            check_box(f"{path}.regions[{index}]", box)
        if body.sampling.method or any(body.sampling.HasField(name) for name in GREEDY_ONLY_OPTIONS):
            raise InvalidArgument(f"{path}.sampling", "infilling decodes greedily: only the seed may be set")
        check_text(f"{path}.text", body.text, settings, required=False)
    elif kind == "segmentation":
        images.append(check_image_field(f"{path}.image", body.image))
    elif kind == "structure_guided":
        images.append(check_image_field(f"{path}.segmentation_map", body.segmentation_map))
        check_text(f"{path}.caption", body.caption, settings)
    elif kind == "grounded_generation":
        if not 1 <= len(body.objects) <= MAX_OBJECTS:
            raise InvalidArgument(f"{path}.objects", f"give 1 to {MAX_OBJECTS} objects, got {len(body.objects)}")
        for index, obj in enumerate(body.objects):
            check_text(f"{path}.objects[{index}].description", obj.description, settings)
            check_box(f"{path}.objects[{index}].box", obj.box)
        check_text(f"{path}.prompt", body.prompt, settings, required=False)
    elif kind == "text_rendering":
        check_text(f"{path}.text", body.text, settings)
    return kind, images


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument("request_id", f"is {len(request_id)} characters; the limit is {MAX_REQUEST_ID_CHARS}")
