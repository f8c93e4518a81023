"""Protobuf <-> domain: the wire types of `cm3leon_client.api` and the engine's requests / the store's records.

Nothing here decides anything: validation happened before (`validation.py`), and the meaning of every field is
the engine's. Images arrive here as object keys (inline bytes were uploaded first) and leave as `ImageRef`.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp

from cm3leon.inference import requests as domain
from cm3leon_client.api import common_pb2, jobs_pb2
from services.records import JobRecord, JobState, StoredObject

METHODS = {
    jobs_pb2.DECODING_METHOD_SAMPLE: "sample",
    jobs_pb2.DECODING_METHOD_CFG: "cfg",
    jobs_pb2.DECODING_METHOD_CDK: "cdk",
    jobs_pb2.DECODING_METHOD_POOLED: "pooled",
}
STATES = {state: getattr(jobs_pb2, f"JOB_STATE_{state.value}") for state in JobState}
STATES_FROM_PROTO = {value: state for state, value in STATES.items()}
CAPTION_STYLES = {jobs_pb2.CAPTION_STYLE_SHORT: "short", jobs_pb2.CAPTION_STYLE_DETAILED: "detailed"}


def sampling(message: jobs_pb2.Sampling) -> domain.Sampling:
    def optional(name: str) -> float | int | None:
        return getattr(message, name) if message.HasField(name) else None

    return domain.Sampling(
        method=METHODS.get(message.method),
        temperature=optional("temperature"),
        top_p=optional("top_p"),
        guidance_scale=optional("guidance_scale"),
        guidance_plausibility=optional("guidance_plausibility"),
        num_candidates=optional("num_candidates"),  # type: ignore[arg-type]
        seed=optional("seed"),  # type: ignore[arg-type]
        retrieved_k=message.retrieved_k if message.HasField("retrieved_k") else None,
        memory=message.memory or None,
    )


def image_ref(message: common_pb2.ImageInput) -> domain.ImageRef:
    if message.WhichOneof("source") != "object_key":
        raise ValueError("images must be object keys once accepted (inline bytes are uploaded first)")
    return domain.ImageRef(message.object_key)


def box(message: common_pb2.Box) -> domain.NormBox:
    return domain.NormBox(message.x0, message.y0, message.x1, message.y1)


def request_to_domain(request: jobs_pb2.JobRequest) -> domain.JobRequest:
    kind = request.WhichOneof("kind")
    body = getattr(request, kind) if kind else None
    if kind == "text_to_image":
        return domain.TextToImage(body.prompt, body.num_images or 1, sampling(body.sampling))
    if kind == "caption":
        return domain.Caption(
            image_ref(body.image), CAPTION_STYLES.get(body.style, "detailed"), sampling(body.sampling)
        )
    if kind == "visual_question":
        return domain.VisualQuestion(image_ref(body.image), body.question, body.explain, sampling(body.sampling))
    if kind == "edit":
        return domain.Edit(
            image_ref(body.image),
            body.instruction,
            body.text_guidance_scale if body.HasField("text_guidance_scale") else None,
            body.image_guidance_scale if body.HasField("image_guidance_scale") else None,
            sampling(body.sampling),
            body.source_copy_bias if body.HasField("source_copy_bias") else None,
            body.redraw if body.HasField("redraw") else True,
        )
    if kind == "infill":
        regions = tuple(box(region) for region in body.regions)
        return domain.Infill(image_ref(body.image), regions, body.text, sampling(body.sampling))
    if kind == "segmentation":
        return domain.Segmentation(image_ref(body.image))
    if kind == "structure_guided":
        return domain.StructureGuided(image_ref(body.segmentation_map), body.caption, sampling(body.sampling))
    if kind == "grounded_generation":
        objects = tuple(domain.GroundedObject(o.description, box(o.box)) for o in body.objects)
        return domain.GroundedGeneration(objects, body.prompt, sampling(body.sampling))
    if kind == "text_rendering":
        return domain.TextRendering(body.text, sampling(body.sampling))
    raise ValueError(f"no job kind set (got {kind!r})")


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def object_ref(stored: StoredObject, url: Callable[[str], str]) -> common_pb2.ObjectRef:
    return common_pb2.ObjectRef(
        key=stored.key,
        url=url(stored.key),
        size_bytes=stored.size_bytes,
        media_type=stored.media_type,
        sha256=stored.sha256,
        width=stored.width,
        height=stored.height,
    )


def record_to_proto(record: JobRecord, url: Callable[[str], str], queue_position: int = 0) -> jobs_pb2.Job:
    job = jobs_pb2.Job(
        job_id=record.job_id,
        sequence=record.sequence,
        state=STATES[record.state],
        kind=record.kind,
        request_id=record.request_id,
        request=jobs_pb2.JobRequest.FromString(record.request),
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        queue_position=queue_position,
        progress=jobs_pb2.Progress(tokens_done=record.tokens_done, tokens_total=record.tokens_total),
        retrieved=[
            common_pb2.RetrievedDocument(
                doc_id=d.doc_id, score=d.score, text=d.text or "", has_text=d.has_text, has_image=d.has_image
            )
            for d in record.retrieved
        ],
        usage=jobs_pb2.Usage(
            prompt_tokens=record.prompt_tokens, generated_tokens=record.generated_tokens, seconds=record.seconds
        ),
        model_id=record.model_id,
        seed=record.seed,
    )
    if record.preview is not None:
        job.preview.CopyFrom(object_ref(record.preview, url))
    if record.state == JobState.SUCCEEDED:
        job.result.CopyFrom(
            jobs_pb2.JobResult(
                images=[object_ref(image, url) for image in record.images],
                text=record.text,
                legend=[
                    jobs_pb2.LegendEntry(label=label, red=r, green=g, blue=b) for label, (r, g, b) in record.legend
                ],
            )
        )
    if record.error_code:
        job.error.CopyFrom(jobs_pb2.JobError(code=record.error_code, message=record.error_message))
    return job
