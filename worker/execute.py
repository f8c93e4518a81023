"""One job's life on a worker: claim it, fetch inputs, run the engine with progress, upload, record the result.

Idempotent per job id: a finished job is skipped, outputs go to deterministic keys (a redelivered job writes
the same objects), and a job delivered more than `max_deliveries` times (its worker died every time: a poison
message) is failed with DEAD_LETTER and listed under {ns}:dead-letter instead of being run again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping

from celery.exceptions import SoftTimeLimitExceeded

from cm3leon.kinds import JobRequest, kind_of
from cm3leon.requests import EngineResult, ImageRef, JobCancelled, Progress, UnsupportedJobKind
from cm3leon.retrieval.owners import read_as
from cm3leon_client.api import jobs_pb2
from services.convert import request_to_domain
from services.objectstore import output_key, preview_key
from services.records import JobRecord, JobState, RetrievedInfo
from services.telemetry import extract_context, tracer
from worker.runtime import Runtime

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 0.25  # at most this often a progress snapshot (previews are always published)
CANCEL_CHECK_INTERVAL_S = 0.05  # the cancel flag is read from Redis at most this often


def fetch_inputs(runtime: Runtime, request: JobRequest) -> JobRequest:
    images = {name: runtime.objects.get_image(getattr(request, name).key) for name in kind_of(request).images}
    return dataclasses.replace(request, **images) if images else request


class JobReporter:
    """Progress, previews and cancellation for one running job."""

    def __init__(self, runtime: Runtime, job_id: str) -> None:
        self.runtime, self.job_id = runtime, job_id
        self.last_publish = 0.0
        self.last_cancel_check = 0.0
        self.previews = 0

    def progress(self, progress: Progress) -> None:
        delay = self.runtime.settings.debug_step_delay_s
        if delay and progress.preview is None:
            time.sleep(delay)
        now = time.monotonic()
        final = progress.tokens_done == progress.tokens_total
        if progress.preview is None and not final and now - self.last_publish < PROGRESS_INTERVAL_S:
            return
        self.last_publish = now
        stored = None
        if progress.preview is not None:
            with tracer().start_as_current_span("upload.preview", attributes={"job.id": self.job_id}):
                stored = self.runtime.objects.put_image(preview_key(self.job_id, self.previews), progress.preview)
            self.previews += 1

        def apply(record: JobRecord) -> bool:
            if record.state != JobState.RUNNING:
                return False
            record.tokens_done, record.tokens_total = progress.tokens_done, progress.tokens_total
            record.preview = stored or record.preview
            return True

        self.runtime.store.update(self.job_id, apply)

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if now - self.last_cancel_check < CANCEL_CHECK_INTERVAL_S:
            return False
        self.last_cancel_check = now
        return self.runtime.store.cancel_requested(self.job_id)


def claim(runtime: Runtime, job_id: str) -> JobRecord | None:
    """Mark the job RUNNING (counting deliveries); None when there is nothing to run."""

    def start(record: JobRecord) -> bool:
        if record.state.finished:
            return False
        record.deliveries += 1
        if record.deliveries > runtime.settings.max_deliveries:
            record.finish(
                JobState.FAILED, "DEAD_LETTER", f"delivered {record.deliveries - 1} times, its worker died each time"
            )
            return True
        record.state = JobState.RUNNING
        record.started_at = record.started_at or time.time()
        record.model_id = runtime.engine.bundle.model_id
        return True

    record = runtime.store.update(job_id, start)
    if record is None or record.state != JobState.RUNNING:
        if record is not None and record.error_code == "DEAD_LETTER":
            runtime.store.dead_letter(job_id)
        return None
    return record


def finish(runtime: Runtime, job_id: str, state: JobState, code: str = "", message: str = "") -> None:
    def apply(record: JobRecord) -> bool:
        if record.state.finished:
            return False
        record.finish(state, code, message)
        return True

    runtime.store.update(job_id, apply)
    runtime.metrics.jobs.add(1, {"state": state.value})


def record_result(runtime: Runtime, job_id: str, result: EngineResult) -> None:
    with tracer().start_as_current_span("upload", attributes={"job.id": job_id, "images": len(result.images)}):
        stored = [runtime.objects.put_image(output_key(job_id, i), image) for i, image in enumerate(result.images)]

    def apply(record: JobRecord) -> bool:
        if record.state.finished:
            return False
        record.images, record.text, record.legend = stored, result.text, list(result.legend)
        record.retrieved = [RetrievedInfo(**dataclasses.asdict(doc)) for doc in result.retrieved]
        record.prompt_tokens, record.generated_tokens = result.prompt_tokens, result.generated_tokens
        record.seconds, record.seed = result.seconds, result.seed
        record.tokens_done = record.tokens_total
        record.finish(JobState.SUCCEEDED)
        return True

    runtime.store.update(job_id, apply)
    runtime.metrics.jobs.add(1, {"state": JobState.SUCCEEDED.value})
    runtime.metrics.duration.record(result.seconds)
    if result.seconds > 0:
        runtime.metrics.tokens_per_s.record(result.generated_tokens / result.seconds)


def run_job(runtime: Runtime, job_id: str, trace_context: Mapping[str, str] | None) -> str:
    """Run one job to a final state; returns that state (or "skipped")."""
    attributes = {"job.id": job_id}
    with tracer().start_as_current_span(
        "worker.run_job", context=extract_context(trace_context), attributes=attributes
    ) as span:
        if runtime.store.cancel_requested(job_id):
            finish(runtime, job_id, JobState.CANCELLED, "CANCELLED", "cancelled before it started")
            return JobState.CANCELLED.value
        record = claim(runtime, job_id)
        if record is None:
            return "skipped"
        span.set_attribute("job.kind", record.kind)
        read_as(record.tenant)  # security: the job retrieves only its tenant's and the base memory's documents
        reporter = JobReporter(runtime, job_id)
        try:
            wire = jobs_pb2.JobRequest.FromString(record.request)
            request = request_to_domain(wire)
            if any(isinstance(getattr(request, name), ImageRef) for name in kind_of(request).images):
                with tracer().start_as_current_span("fetch_inputs"):
                    request = fetch_inputs(runtime, request)
            result = runtime.engine.run(
                request,
                progress=reporter.progress,
                should_cancel=reporter.should_cancel,
                stage=lambda name, attrs: tracer().start_as_current_span(name, attributes=dict(attrs)),
                plain=wire.plain,
            )
            span.set_attribute("tokens.generated", result.generated_tokens)
            record_result(runtime, job_id, result)
            return JobState.SUCCEEDED.value
        except JobCancelled:
            finish(runtime, job_id, JobState.CANCELLED, "CANCELLED", "cancelled while running")
            return JobState.CANCELLED.value
        except UnsupportedJobKind as error:
            finish(runtime, job_id, JobState.FAILED, "UNIMPLEMENTED", str(error))
        except SoftTimeLimitExceeded:
            limit = runtime.settings.soft_time_limit_s
            finish(runtime, job_id, JobState.FAILED, "DEADLINE_EXCEEDED", f"the job ran past {limit} s")
        except ValueError as error:
            finish(runtime, job_id, JobState.FAILED, "INVALID_ARGUMENT", str(error))
        except Exception as error:
            log.exception("job %s failed", job_id)
            finish(runtime, job_id, JobState.FAILED, "INTERNAL", f"{type(error).__name__}: {error}")
        return JobState.FAILED.value
