"""Settings of every service, from environment variables with the prefix `CM3LEON_` (validated at start).

One settings object per service, sharing the connection settings: `GatewaySettings` (the gRPC gateway) and
`WorkerSettings` (the Celery worker). The README's "Serving" section lists every variable with its default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.security_settings import SecuritySettings

ENV_PREFIX = "CM3LEON_"
MIB = 1024 * 1024


class StackSettings(BaseSettings):
    """Where the shared services are, and the names everything derives from."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Prefix of every Redis key and Celery queue: two stacks can share one Redis (the tests do).
    namespace: str = "cm3"
    s3_endpoint: str = "127.0.0.1:8333"  # host:port of any S3 server (SeaweedFS, MinIO)
    s3_access_key: str = "cm3leon"
    s3_secret_key: str = "cm3leon-secret"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_bucket: str = "cm3leon"
    # Object-store calls of a job (input fetch, output upload) are retried with backoff for this long.
    s3_retry_deadline_s: float = Field(60.0, ge=0)
    presign_expiry_s: int = Field(3600, ge=1, le=7 * 24 * 3600)  # S3's presigned URLs last at most 7 days
    # Finished jobs (records, events, idempotency keys) are kept this long.
    job_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    # fsync policy of the embedded stack's Redis append-only file: everysec (at most the last second of accepted
    # writes can go in a crash) or always (none can; every write waits for the disk).
    redis_appendfsync: Literal["everysec", "always"] = "everysec"
    # Every Redis client: a hung Redis fails a call after this long (UNAVAILABLE, or a retry) instead of hanging it;
    # idle connections are checked before use this often (a restarted Redis is noticed, not written into).
    redis_socket_timeout_s: float = Field(5.0, gt=0)
    redis_health_check_s: int = Field(10, ge=0)
    # The gateway's pooled Redis client opens at most this many connections (callers wait for a free one);
    # WatchJob streams hold none of them (services.watch_hub reads every stream over `watch_readers` more).
    redis_max_connections: int = Field(16, ge=1)
    # A running job holds a lease its worker renews (every third of it); a reaper (in every gateway and worker,
    # one at a time) requeues each job whose lease expired, or fails it past `max_deliveries` deliveries.
    lease_ttl_s: float = Field(30.0, gt=0)
    reaper_interval_s: float = Field(5.0, gt=0)
    # A job still in the outbox (written, not known to be published) this long after submit is published again.
    outbox_age_s: float = Field(5.0, gt=0)
    # A job still queued this long after its message was last published is published again (the message may
    # have gone with a worker that died holding it unclaimed; the broker restores such a message only after its
    # visibility timeout). Each extra message of a job is skipped by the worker that takes it.
    republish_after_s: float = Field(300.0, gt=0)
    # Deliveries of one job before it is dead-lettered (a poison message that kills its worker every time).
    max_deliveries: int = Field(3, ge=1)
    # Fair dispatch (services.dispatch), read by every gateway, worker and reaper alike: a tenant's dispatched,
    # unfinished jobs may cost at most this much together (cost: services.cost; a tenant with nothing running may
    # always start one job), and the broker holds at most `dispatch_window` jobs not yet started (0: the live
    # workers' job slots).
    tenant_max_running_cost: int = Field(4096, ge=1)
    dispatch_window: int = Field(0, ge=0)
    # "none", "console", "otlp" (OTEL_EXPORTER_OTLP_ENDPOINT) or "file:PATH" (JSON lines; tests use it).
    otel_exporter: str = "none"
    service_name: str = "cm3leon"

    @field_validator("otel_exporter")
    @classmethod
    def _exporter_known(cls, value: str) -> str:
        if value not in ("none", "console", "otlp") and not value.startswith("file:"):
            raise ValueError(f"otel_exporter must be none, console, otlp or file:PATH, got {value!r}")
        return value

    @field_validator("s3_bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not 3 <= len(value) <= 63 or not value.replace("-", "").isalnum() or value != value.lower():
            raise ValueError(f"s3_bucket must be 3-63 lowercase letters, digits or '-', got {value!r}")
        return value


class GatewaySettings(SecuritySettings, StackSettings):  # keys, TLS, tenancy: services/security_settings.py
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)  # 0: any free port (printed at start)
    # Queued jobs over all queues above which SubmitJob answers RESOURCE_EXHAUSTED (load shedding).
    max_queued_jobs: int = Field(64, ge=0)
    max_image_bytes: int = Field(4 * MIB, ge=1)  # an inline image (PNG/JPEG)
    max_image_pixels: int = Field(1024 * 1024, ge=1)  # width x height of a decoded image
    min_image_side: int = Field(8, ge=1)
    max_prompt_chars: int = Field(1000, ge=1)
    max_message_bytes: int = Field(16 * MIB, ge=4 * MIB)  # gRPC receive limit (above the 4 MiB default)
    # Graceful shutdown: health NOT_SERVING, then in-flight RPCs get this long before the server stops.
    drain_s: float = Field(5.0, ge=0)
    # How long a CorpusService call waits for a worker.
    corpus_timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _watch_block_below_socket_timeout(self) -> GatewaySettings:
        if self.watch_block_ms >= self.redis_socket_timeout_s * 1000:
            raise ValueError(
                f"watch_block_ms ({self.watch_block_ms}) must be below redis_socket_timeout_s "
                f"({self.redis_socket_timeout_s} s): a blocked read would time out"
            )
        return self


class WorkerSettings(StackSettings):
    model_dir: str = "models/shapes"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when present
    threads: int = Field(1, ge=0)  # torch intra-op threads (0: torch's choice)
    # The retrieval memory (Qdrant local mode at memory_path unless QDRANT_URL names a server).
    memory_name: str = "shapes"
    memory_path: str = "out/qdrant"
    retriever_dir: str = "models/shapes/retriever"
    memory_diversity_threshold: float = Field(0.9, gt=0)  # the paper's near-duplicate rule (>1 disables it)
    # Jobs one worker process runs at once (Celery's threads pool, one thread per job, all sharing the process's
    # one loaded engine; prefetch is the same number). 0: sized for the device (`worker.runtime.job_threads`).
    worker_jobs: int = Field(0, ge=0, le=256)
    # A job's time limits, kept by the worker itself (Celery's threads pool enforces none): past the soft limit the
    # job is cancelled between decode steps and fails DEADLINE_EXCEEDED; a job still running at the hard limit (a
    # call that never returns) is failed and the process exits (its other jobs are redelivered) < the broker's
    # visibility timeout (after which an unacknowledged message is redelivered).
    soft_time_limit_s: int = Field(600, ge=1)
    hard_time_limit_s: int = Field(660, ge=1)
    visibility_timeout_s: int = Field(900, ge=1)
    # The retrieval memory (Qdrant) failing during a job is retried for retrieval_retry_deadline_s; then "fail":
    # the job fails UNAVAILABLE, or "skip": it is generated without retrieved documents (recorded on the job).
    retrieval_outage: Literal["fail", "skip"] = "fail"
    retrieval_retry_deadline_s: float = Field(10.0, ge=0)
    # Progressive previews per image (at each 1/N of the image block; the issue asks for at least 4).
    previews_per_image: int = Field(4, ge=0)
    # The scheduler every job thread's decode shares (`docs/engine.md`): KV-cache rows in the pool (each stream row
    # of each running candidate takes one: a CFG image candidate two), cache positions the running requests may
    # reserve (0: rows x the model's context), and how many rows x positions one prefill chunk may take while
    # others decode (the bound on how long a long retrieved prompt stalls them). A request waits while it does not
    # fit; one that never can fails INVALID_ARGUMENT.
    decoder_max_rows: int = Field(64, ge=1, le=4096)
    decoder_max_tokens: int = Field(0, ge=0)
    decoder_prefill_chunk_tokens: int = Field(512, ge=1)
    # Debug: sleep this long per decode step (to watch progress; the tests use it to cancel mid-decode).
    debug_step_delay_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _limits_ordered(self) -> WorkerSettings:
        if not self.soft_time_limit_s < self.hard_time_limit_s < self.visibility_timeout_s:
            raise ValueError(
                "need soft_time_limit_s < hard_time_limit_s < visibility_timeout_s, got "
                f"{self.soft_time_limit_s}, {self.hard_time_limit_s}, {self.visibility_timeout_s}"
            )
        return self
