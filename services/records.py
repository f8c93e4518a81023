"""The job record: what the job store keeps per job (JSON in Redis), independent of the wire format.

The request is kept as the accepted `JobRequest` protobuf bytes (inline images already replaced by object
keys): it is opaque here, converted to the engine's domain request by the worker (`services.convert`).
"""

from __future__ import annotations

import secrets
import time
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

JOB_ID_BYTES = 16  # 128 random bits: unguessable


class JobState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class StoredObject(BaseModel):
    key: str
    size_bytes: int
    media_type: str
    sha256: str
    width: int = 0
    height: int = 0


class RetrievedInfo(BaseModel):
    doc_id: str
    score: float
    text: str | None = None
    has_text: bool = False
    has_image: bool = False


class JobRecord(BaseModel):
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    job_id: str
    tenant: str
    kind: str
    queue: str
    request: bytes  # JobRequest protobuf, images as object keys
    request_id: str = ""
    fingerprint: str = ""  # sha256 of the submitted payload, for idempotency
    state: JobState = JobState.QUEUED
    sequence: int = 1
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    tokens_done: int = 0
    tokens_total: int = 0
    preview: StoredObject | None = None
    images: list[StoredObject] = Field(default_factory=list)
    text: str = ""
    legend: list[tuple[str, tuple[int, int, int]]] = Field(default_factory=list)
    error_code: str = ""
    error_message: str = ""
    retrieved: list[RetrievedInfo] = Field(default_factory=list)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    model_id: str = ""
    seed: int = 0
    deliveries: int = 0  # how many times a worker started it (dead-lettered past the limit)
    retrieval_skipped: bool = False  # the memory was unavailable and the job ran without retrieval (by setting)
    cost: int = 0  # its fair-use cost (`services.cost`), counted against its tenant's running cap once dispatched
    trace_context: dict[str, str] = Field(default_factory=dict)  # the submit's trace, for whoever publishes it

    def finish(self, state: JobState, code: str = "", message: str = "") -> None:
        self.state = state
        self.finished_at = time.time()
        self.error_code, self.error_message = code, message


def decode_record(raw: bytes | str | None) -> JobRecord | None:
    """A record from its JSON (as stored in Redis); None for a missing one."""
    return JobRecord.model_validate_json(raw) if raw else None


def new_job_id() -> str:
    return secrets.token_hex(JOB_ID_BYTES)
