"""Typed request builders, one per job kind (re-exported by `cm3leon_client`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cm3leon_client.api import common_pb2, jobs_pb2

METHODS = {
    "sample": jobs_pb2.DECODING_METHOD_SAMPLE,
    "cfg": jobs_pb2.DECODING_METHOD_CFG,
    "cdk": jobs_pb2.DECODING_METHOD_CDK,
    "pooled": jobs_pb2.DECODING_METHOD_POOLED,
}


def image_input(image: bytes | str | Path) -> common_pb2.ImageInput:
    """PNG/JPEG bytes, a file path, or "key:<object key>" of an earlier job's input or output."""
    if isinstance(image, str) and image.startswith("key:"):
        return common_pb2.ImageInput(object_key=image.removeprefix("key:"))
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return common_pb2.ImageInput(data=data)


def sampling(
    method: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    guidance_scale: float | None = None,
    guidance_plausibility: float | None = None,
    num_candidates: int | None = None,
    seed: int | None = None,
    retrieved_k: int | None = None,
    memory: str | None = None,
) -> jobs_pb2.Sampling:
    message = jobs_pb2.Sampling(method=METHODS[method] if method else jobs_pb2.DECODING_METHOD_UNSPECIFIED)
    for name, value in (
        ("temperature", temperature),
        ("top_p", top_p),
        ("guidance_scale", guidance_scale),
        ("guidance_plausibility", guidance_plausibility),
        ("num_candidates", num_candidates),
        ("seed", seed),
        ("retrieved_k", retrieved_k),
        ("memory", memory),
    ):
        if value is not None:
            setattr(message, name, value)
    return message


def text_to_image(prompt: str, num_images: int = 1, **options: Any) -> jobs_pb2.JobRequest:
    body = jobs_pb2.TextToImage(prompt=prompt, num_images=num_images, sampling=sampling(**options))
    return jobs_pb2.JobRequest(text_to_image=body)


def caption(image: bytes | str | Path, style: str = "detailed", **options: Any) -> jobs_pb2.JobRequest:
    styles = {"short": jobs_pb2.CAPTION_STYLE_SHORT, "detailed": jobs_pb2.CAPTION_STYLE_DETAILED}
    body = jobs_pb2.Caption(image=image_input(image), style=styles[style], sampling=sampling(**options))
    return jobs_pb2.JobRequest(caption=body)


def visual_question(
    image: bytes | str | Path, question: str, explain: bool = False, **options: Any
) -> jobs_pb2.JobRequest:
    body = jobs_pb2.VisualQuestion(
        image=image_input(image), question=question, explain=explain, sampling=sampling(**options)
    )
    return jobs_pb2.JobRequest(visual_question=body)


def edit(
    image: bytes | str | Path,
    instruction: str,
    text_guidance_scale: float | None = None,
    image_guidance_scale: float | None = None,
    source_copy_bias: float | None = None,
    **options: Any,
) -> jobs_pb2.JobRequest:
    """Unset scales and copy bias take the model's defaults (its sweep's; else the paper's text 7.5, image 1.5)."""
    body = jobs_pb2.Edit(image=image_input(image), instruction=instruction, sampling=sampling(**options))
    if text_guidance_scale is not None:
        body.text_guidance_scale = text_guidance_scale
    if image_guidance_scale is not None:
        body.image_guidance_scale = image_guidance_scale
    if source_copy_bias is not None:
        body.source_copy_bias = source_copy_bias
    return jobs_pb2.JobRequest(edit=body)


def plain(request: jobs_pb2.JobRequest) -> jobs_pb2.JobRequest:
    """`request` asking for the engine's generic decoding of its kind, without the model's own policy for it."""
    request.plain = True
    return request


def box(x0: float, y0: float, x1: float, y1: float) -> common_pb2.Box:
    return common_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1)


def infill(
    image: bytes | str | Path, regions: Sequence[tuple[float, float, float, float]], text: str = "", **options: Any
) -> jobs_pb2.JobRequest:
    body = jobs_pb2.Infill(
        image=image_input(image), regions=[box(*r) for r in regions], text=text, sampling=sampling(**options)
    )
    return jobs_pb2.JobRequest(infill=body)


def segmentation(image: bytes | str | Path) -> jobs_pb2.JobRequest:
    return jobs_pb2.JobRequest(segmentation=jobs_pb2.Segmentation(image=image_input(image)))


def structure_guided(segmentation_map: bytes | str | Path, caption_text: str, **options: Any) -> jobs_pb2.JobRequest:
    body = jobs_pb2.StructureGuided(
        segmentation_map=image_input(segmentation_map), caption=caption_text, sampling=sampling(**options)
    )
    return jobs_pb2.JobRequest(structure_guided=body)


def grounded_generation(
    objects: Sequence[tuple[str, tuple[float, float, float, float]]], prompt: str = "", **options: Any
) -> jobs_pb2.JobRequest:
    body = jobs_pb2.GroundedGeneration(
        objects=[jobs_pb2.GroundedObject(description=d, box=box(*b)) for d, b in objects],
        prompt=prompt,
        sampling=sampling(**options),
    )
    return jobs_pb2.JobRequest(grounded_generation=body)


def text_rendering(text: str, **options: Any) -> jobs_pb2.JobRequest:
    return jobs_pb2.JobRequest(text_rendering=jobs_pb2.TextRendering(text=text, sampling=sampling(**options)))
