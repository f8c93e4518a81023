"""Validation of submitted requests, with messages that name the field (INVALID_ARGUMENT).

Every kind is checked by its declaration in `cm3leon.kinds` (its texts, ranges, boxes, image fields and sampling
rules) and every enum by the proto; inline images are decoded (PNG/JPEG only, size, dimensions, pixel count) into
normalised PNG bytes, so the worker only ever reads well-formed images.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from PIL import Image, UnidentifiedImageError

from cm3leon.kinds import GUIDANCE, KIND_BY_NAME, KINDS, Boxes, JobKind, Range, Rule, Text
from cm3leon_client.api import common_pb2, jobs_pb2
from services.errors import InvalidArgument
from services.objectstore import REFERENCEABLE_KEY, png_bytes
from services.settings import GatewaySettings

ALLOWED_FORMATS = ("PNG", "JPEG")  # the only PIL plugins that ever see untrusted bytes
# 8-bit colour or grey, with or without alpha: palette, CMYK and 16-bit images are refused, not guessed at.
ALLOWED_MODES = ("RGB", "RGBA", "L", "LA")
PNG_BIT_DEPTH_OFFSET = 24  # signature (8) + IHDR length and type (8) + width and height (8)
# Ranges of the sampling parameters (beyond them decoding degenerates or the batch explodes).
TEMPERATURE_RANGE = (0.0, 5.0)
PLAUSIBILITY_RANGE = (0.0, 1.0)  # a fraction of the conditional stream's largest probability
CANDIDATES_RANGE = (1, 16)
RETRIEVED_K_RANGE = (0, 8)
MEMORY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_REQUEST_ID_CHARS = 128
# Kinds the model was trained to read retrieved documents for (the instruction-tuned kinds never saw any).
RETRIEVAL_KINDS = ", ".join(kind.name for kind in KINDS if kind.retrieval)
# A greedy kind takes only the seed of its sampling options.
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
        check_range(f"{path}.guidance_scale", sampling.guidance_scale, *GUIDANCE)
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
        with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as picture:
            check_image_kind(path, picture, data)
            width, height = picture.size
            if width * height > settings.max_image_pixels:
                raise InvalidArgument(path, f"has {width}x{height} pixels; the limit is {settings.max_image_pixels}")
            if min(width, height) < settings.min_image_side:
                raise InvalidArgument(path, f"is {width}x{height}; each side must be >= {settings.min_image_side}")
            picture.load()
            return png_bytes(picture)
    except UnidentifiedImageError as error:
        raise InvalidArgument(path, "is not a PNG or JPEG image (other formats are not accepted)") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidArgument(path, f"is not a readable PNG or JPEG image ({error})") from error


def check_image_kind(path: str, picture: Image.Image, data: bytes) -> None:
    """One still 8-bit RGB/grey image (alpha allowed), nothing the normalisation would have to guess about."""
    if picture.format not in ALLOWED_FORMATS:
        raise InvalidArgument(path, f"format {picture.format} is not accepted; send PNG or JPEG")
    if picture.get_format_mimetype() == "image/apng" or getattr(picture, "n_frames", 1) > 1:
        raise InvalidArgument(path, "animated images (APNG) are not accepted; send one still PNG or JPEG")
    if picture.format == "PNG" and len(data) > PNG_BIT_DEPTH_OFFSET and data[PNG_BIT_DEPTH_OFFSET] != 8:
        raise InvalidArgument(path, f"has {data[PNG_BIT_DEPTH_OFFSET]}-bit samples; send an 8-bit image")
    if picture.mode not in ALLOWED_MODES:
        raise InvalidArgument(path, f"mode {picture.mode} is not accepted; send 8-bit RGB, RGBA or greyscale")


def check_enums(path: str, message: Message) -> None:
    """Every enum field of `message` (nested messages included) holds a value its enum defines."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type.values_by_number.get(value) is None:
            raise InvalidArgument(f"{path}.{field.name}", f"unknown {field.enum_type.name} {value}")
        if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
            check_enums(f"{path}.{field.name}", value)


def is_set(body: Message, name: str) -> bool:
    """A field with presence when present, else when it is not its zero value (proto3: 0 means unset)."""
    return body.HasField(name) if body.DESCRIPTOR.fields_by_name[name].has_presence else bool(getattr(body, name))


def check_rule(path: str, body: Message, rule: Rule, settings: GatewaySettings) -> None:
    if isinstance(rule, Text):
        check_text(f"{path}.{rule.name}", getattr(body, rule.name), settings, required=rule.required)
    elif isinstance(rule, Range):
        if is_set(body, rule.name) or not rule.optional:
            check_range(f"{path}.{rule.name}", getattr(body, rule.name), rule.low, rule.high, rule.low_open)
    elif isinstance(rule, Boxes):
        items = getattr(body, rule.name)
        if not 1 <= len(items) <= rule.max_count:
            raise InvalidArgument(f"{path}.{rule.name}", f"give 1 to {rule.max_count} {rule.name}, got {len(items)}")
        for index, item in enumerate(items):
            where = f"{path}.{rule.name}[{index}]"
            if rule.text is None:
                check_box(where, item)
            else:
                check_text(f"{where}.{rule.text}", getattr(item, rule.text), settings)
                check_box(f"{where}.box", item.box)


def check_kind_sampling(path: str, kind: JobKind, sampling: jobs_pb2.Sampling) -> None:
    """The kind's sampling rules from its declaration (the engine checks the same on domain requests)."""
    check_sampling(path, sampling)
    if not kind.retrieval and sampling.retrieved_k:
        raise InvalidArgument(
            f"{path}.retrieved_k", f"{kind.name} does not use retrieved context (only {RETRIEVAL_KINDS})"
        )
    if kind.sampling == "seed" and (sampling.method or any(sampling.HasField(n) for n in GREEDY_ONLY_OPTIONS)):
        raise InvalidArgument(path, f"{kind.name} decodes greedily: only the seed may be set")


def validate_request(request: jobs_pb2.JobRequest, settings: GatewaySettings) -> tuple[str, list[ImageField]]:
    """(the kind, its image inputs) after every check; raises InvalidArgument naming the first bad field."""
    name = request.WhichOneof("kind")
    if name is None:
        raise InvalidArgument("request", f"choose one job kind ({', '.join(KIND_BY_NAME)})")
    kind, path = KIND_BY_NAME[name], f"request.{name}"
    body = getattr(request, name)
    check_enums(path, body)
    if kind.sampling != "none":
        check_kind_sampling(f"{path}.sampling", kind, body.sampling)
    images = [check_image_field(f"{path}.{field}", getattr(body, field)) for field in kind.images]
    for rule in kind.rules:
        check_rule(path, body, rule, settings)
    return name, images


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument("request_id", f"is {len(request_id)} characters; the limit is {MAX_REQUEST_ID_CHARS}")
