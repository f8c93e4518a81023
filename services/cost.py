"""A job's cost, the unit of every fair-use limit (rate, queued and running caps): the tokens its decoding writes.

    cost = images x candidates x streams x tokens
    images      `num_images` where the kind has it, else 1
    candidates  `sampling.num_candidates`, else the model's default for the kind
    streams     rows decoded per candidate: 1 unguided (greedy kinds, `sampling.method = "sample"`), 2 with
                classifier-free guidance or CD-K (conditional + unconditional), 3 with editing's text + image guidance
    tokens      per output: an image kind's image code count, a text kind's `max_new_tokens`

The model's numbers come from the workers: each declares a `profile` of its model in its presence entry (code
count, and per kind its default candidates, streams and text budget). Before any worker has reported, the gateway
uses the settings `cost_image_tokens` and `cost_text_tokens` with one candidate and the kind's usual streams.
Torch-free: the gateway computes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.message import Message

from services.convert import METHODS
from services.keys import TEXT_KINDS

GUIDED_METHODS = frozenset({"cfg", "cdk", "pooled"})
THREE_STREAM_KINDS = frozenset({"edit"})  # text + image guidance when guided
UNGUIDED_KINDS = frozenset({"infill", "segmentation", "caption", "visual_question"})  # the usual method: no guidance
Profile = dict[str, Any]  # {"kinds": {kind: {"candidates": int, "streams": int, "tokens": int}}}


def guidance_streams(kind: str, method: str | None, three_streams: bool | None = None) -> int:
    """Rows decoded per candidate of `kind` decoded with `method` (None: the kind's usual method)."""
    if method is None:
        method = "sample" if kind in UNGUIDED_KINDS else "cfg"
    if method not in GUIDED_METHODS:
        return 1
    if three_streams is None:
        three_streams = kind in THREE_STREAM_KINDS
    return 3 if three_streams and method != "cdk" else 2


def fallback_entry(kind: str, image_tokens: int, text_tokens: int) -> dict[str, int]:
    """A kind's cost entry from the settings (no worker has declared its model yet)."""
    tokens = text_tokens if kind in TEXT_KINDS else image_tokens
    return {"candidates": 1, "streams": guidance_streams(kind, None), "tokens": tokens}


def merged_profile(infos: Iterable[Mapping[str, Any]]) -> Profile:
    """The costliest entry per kind over the live workers' declared profiles (a job may land on any of them)."""
    kinds: dict[str, dict[str, int]] = {}
    for info in infos:
        for kind, entry in info.get("cost", {}).get("kinds", {}).items():
            current = kinds.setdefault(kind, dict(entry))
            for name in ("candidates", "streams", "tokens"):
                current[name] = max(int(current.get(name, 1)), int(entry.get(name, 1)))
    return {"kinds": kinds}


def job_cost(request: Message, profile: Profile | None = None, image_tokens: int = 64, text_tokens: int = 64) -> int:
    """The cost of a `JobRequest` (the module's formula), from the model's `profile` or the settings' numbers."""
    kind = request.WhichOneof("kind")
    body = getattr(request, kind)
    fields = body.DESCRIPTOR.fields_by_name
    entry = (profile or {}).get("kinds", {}).get(kind) or fallback_entry(kind, image_tokens, text_tokens)
    images = max(1, body.num_images) if "num_images" in fields else 1
    candidates, streams = int(entry["candidates"]), int(entry["streams"])
    if "sampling" in fields:
        if body.sampling.HasField("num_candidates"):
            candidates = body.sampling.num_candidates
        method = METHODS.get(body.sampling.method)
        if method is not None:
            streams = guidance_streams(kind, method)
    return max(1, images) * max(1, candidates) * max(1, streams) * max(1, int(entry["tokens"]))
