"""Protobuf <-> domain: the wire types of `cm3leon_client.api` and the engine's requests / the store's records.

Nothing here decides anything: validation happened before (`validation.py`), and the meaning of every field is
the engine's. Images arrive here as object keys (inline bytes were uploaded first) and leave as `ImageRef`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from cm3leon import kinds
from cm3leon import requests as domain
from cm3leon.kinds import KIND_BY_NAME
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
UNSET = object()  # a proto3 scalar at its zero value: the domain dataclass's default applies


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


def grounded_object(message: jobs_pb2.GroundedObject) -> domain.GroundedObject:
    return domain.GroundedObject(message.description, box(message.box))


# Proto message and enum types -> their domain value, for the fields of every kind's request message.
MESSAGES: dict[str, Callable[[Any], Any]] = {
    "cm3leon.v1.ImageInput": image_ref,
    "cm3leon.v1.Sampling": sampling,
    "cm3leon.v1.Box": box,
    "cm3leon.v1.GroundedObject": grounded_object,
}
ENUMS: dict[str, dict[int, str]] = {"cm3leon.v1.CaptionStyle": CAPTION_STYLES}


def field_value(message: Message, field: FieldDescriptor) -> Any:
    """One field as the domain takes it; `UNSET` for a scalar left at proto3's zero ("unset": the domain's default)."""
    value = getattr(message, field.name)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        convert = MESSAGES[field.message_type.full_name]
        repeated = field.is_repeated
        return tuple(convert(item) for item in value) if repeated else convert(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return ENUMS[field.enum_type.full_name].get(value, UNSET)
    if field.has_presence:
        return value if message.HasField(field.name) else None
    return value if value else UNSET


def request_to_domain(request: jobs_pb2.JobRequest) -> kinds.JobRequest:
    """The domain request of the kind `request` carries, field by field (the kind's table entry names its type)."""
    name = request.WhichOneof("kind")
    if name is None:
        raise ValueError("no job kind set")
    body, request_type = getattr(request, name), KIND_BY_NAME[name].request_type
    values = {
        field.name: field_value(body, body.DESCRIPTOR.fields_by_name[field.name])
        for field in dataclasses.fields(request_type)
        if field.name in body.DESCRIPTOR.fields_by_name
    }
    return request_type(**{key: value for key, value in values.items() if value is not UNSET})


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
        retrieval_skipped=record.retrieval_skipped,
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
