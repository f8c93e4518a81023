"""One job's life on a worker: claim it, fetch inputs, run the engine with progress, upload, record the result.

Idempotent per job id: a finished job is skipped, a job another worker holds the lease of is skipped (a double
publish), outputs go to deterministic keys (a redelivered job writes the same objects), and a job delivered more
than `max_deliveries` times (its worker died every time: a poison message) is failed with DEAD_LETTER and listed
under {ns}:dead-letter instead of being run again. A running job holds a lease the runtime renews; when the worker
dies, or its final write cannot reach Redis, the lease expires and the reaper takes the job back
(`services.reaper`). A job past the soft time limit is cancelled at its next check and fails DEADLINE_EXCEEDED
(the hard limit is kept by the runtime). Several jobs run at once, one per Celery thread: everything here is per
job (its reporter, its `RunningJob`), shared state lives in the runtime. Object-store calls are retried until
`s3_retry_deadline_s`; previews are best-effort; a Redis blip in a progress update is logged, not fatal. A job's
error message never carries internals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import redis
import urllib3
from minio.error import S3Error

from cm3leon.kinds import JobRequest, kind_of
from cm3leon.requests import EngineResult, ImageRef, JobCancelled, Progress, UnsupportedJobKind
from cm3leon.retrieval.owners import reading_as
from cm3leon_client.api import jobs_pb2
from services.convert import request_to_domain
from services.objectstore import output_key, preview_key
from services.records import JobRecord, JobState, RetrievedInfo, StoredObject
from services.retry import DeadlineExceeded, retry_call
from services.telemetry import extract_context, tracer
from worker.dispatching import dispatch_next
from worker.runtime import Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")
PROGRESS_INTERVAL_S = 0.25  # at most this often a progress snapshot (previews are always published)
CANCEL_CHECK_INTERVAL_S = 0.05  # the cancel flag is read from Redis at most this often
# What an object-store call may fail with while the server is away (connection refused, reset, 5xx, timeouts).
S3_TRANSIENT = (urllib3.exceptions.HTTPError, S3Error, OSError)
# What an answer of the object store can say that no retry changes.
S3_PERMANENT = frozenset({"NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
# How long the final write of a job (result or error) is retried while Redis is away.
FINAL_WRITE_DEADLINE_S = 30.0
INTERNAL_MESSAGE = "the worker failed to run the job; the details are in its log and the job's trace"


class JobTimedOut(Exception):
    """The job ran past the soft time limit (seen at a cancel check)."""


def check_cancel(runtime: Runtime, job_id: str) -> None:
    """Raise JobTimedOut past the job's soft time limit, JobCancelled when its cancel flag is set (a Redis blip
    reads as not cancelled)."""
    running = runtime.running.get(job_id)
    if running is not None and running.past_soft_limit():
        raise JobTimedOut()
    try:
        cancelled = runtime.store.cancel_requested(job_id)
    except redis.RedisError:
        return
    if cancelled:
        raise JobCancelled()


def with_s3_retries(runtime: Runtime, job_id: str, what: str, call: Callable[[], T]) -> T:
    """`call` retried while the object store is away, until `s3_retry_deadline_s`; cancel is checked between."""
    return retry_call(
        call,
        what=what,
        deadline_s=runtime.settings.s3_retry_deadline_s,
        retry_on=S3_TRANSIENT,
        between=lambda: check_cancel(runtime, job_id),
        service="the object store",
        transient=lambda error: not (isinstance(error, S3Error) and error.code in S3_PERMANENT),
    )


def fetch_inputs(runtime: Runtime, job_id: str, request: JobRequest) -> JobRequest:
    images = {}
    for name in kind_of(request).images:
        check_cancel(runtime, job_id)
        key = getattr(request, name).key
        images[name] = with_s3_retries(runtime, job_id, f"fetching {key}", lambda k=key: runtime.objects.get_image(k))
    return dataclasses.replace(request, **images) if images else request


def job_store_call(runtime: Runtime, job_id: str, call: Callable[[], T]) -> T:
    """A job-store call before the job runs (its cancel flag, its claim), retried while Redis is away: the
    worker holds the message meanwhile (past the deadline it raises: the job stays QUEUED and the reaper publishes
    it again)."""
    return retry_call(
        call,
        what=f"claiming job {job_id}",
        deadline_s=FINAL_WRITE_DEADLINE_S,
        retry_on=(redis.RedisError,),
        service="the job store",
    )


def store_update(runtime: Runtime, job_id: str, mutate: Callable[[JobRecord], bool]) -> JobRecord | None:
    """A final write, retried while Redis is away (past the deadline it raises: the lease then expires and the
    reaper takes the job back)."""
    return retry_call(
        lambda: runtime.store.update(job_id, mutate),
        what=f"recording job {job_id}",
        deadline_s=FINAL_WRITE_DEADLINE_S,
        retry_on=(redis.RedisError,),
        service="the job store",
    )


class JobReporter:
    """Progress, previews, cancellation and the soft time limit of one running job."""

    def __init__(self, runtime: Runtime, job_id: str) -> None:
        self.runtime, self.job_id = runtime, job_id
        self.running = runtime.running.get(job_id)
        self.last_publish = 0.0
        self.last_cancel_check = 0.0
        self.previews = 0
        self.superseded = False  # the job's record is final already: this run (a redelivery) has nothing to add

    @property
    def timed_out(self) -> bool:
        return self.running is not None and self.running.past_soft_limit()

    def progress(self, progress: Progress) -> None:
        delay = self.runtime.settings.debug_step_delay_s
        if delay and progress.preview is None:
            time.sleep(delay)
        now = time.monotonic()
        final = progress.tokens_done == progress.tokens_total
        if progress.preview is None and not final and now - self.last_publish < PROGRESS_INTERVAL_S:
            return
        self.last_publish = now
        stored = self.upload_preview(progress) if progress.preview is not None else None

        def apply(record: JobRecord) -> bool:
            if record.state != JobState.RUNNING:
                return False
            record.tokens_done, record.tokens_total = progress.tokens_done, progress.tokens_total
            record.preview = stored or record.preview
            return True

        try:
            record = self.runtime.store.update(self.job_id, apply)
            self.superseded = record is None or record.state.finished
        except redis.RedisError as error:  # the next update (or the final one, retried) carries it
            log.warning("job %s: progress update skipped (%s)", self.job_id, type(error).__name__)

    def upload_preview(self, progress: Progress) -> StoredObject | None:
        """Best-effort: a preview the object store refuses is skipped (the job goes on)."""
        key = preview_key(self.job_id, self.previews)
        self.previews += 1
        try:
            with tracer().start_as_current_span("upload.preview", attributes={"job.id": self.job_id}):
                return self.runtime.objects.put_image(key, progress.preview)
        except S3_TRANSIENT as error:
            log.warning("job %s: preview %s skipped (%s)", self.job_id, key, type(error).__name__)
            return None

    def should_cancel(self) -> bool:
        """True when the job was cancelled, ran past its soft time limit (`timed_out` tells which), or finished
        in another run meanwhile (a message redelivered while Redis was away, after the lease had expired)."""
        if self.timed_out or self.superseded:
            return True
        now = time.monotonic()
        if now - self.last_cancel_check < CANCEL_CHECK_INTERVAL_S:
            return False
        self.last_cancel_check = now
        try:
            return self.runtime.store.cancel_requested(self.job_id)
        except redis.RedisError:
            return False


def claim(runtime: Runtime, job_id: str) -> JobRecord | None:
    """Mark the job RUNNING (counting deliveries) and take its lease; None when there is nothing to run (finished,
    or running under another worker's live lease: this message is a second publish)."""
    expiry = runtime.store.lease_expiry(job_id)
    held = expiry is not None and expiry > time.time()
    changed: list[bool] = []

    def start(record: JobRecord) -> bool:
        changed.clear()
        if record.state.finished or (record.state == JobState.RUNNING and held):
            return False
        changed.append(True)
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

    def take_lease(pipe: redis.client.Pipeline, record: JobRecord) -> None:
        if record.state == JobState.RUNNING:
            pipe.zadd(runtime.store.keys.leases, {job_id: time.time() + runtime.settings.lease_ttl_s})

    record = runtime.store.update(job_id, start, also=take_lease)
    if record is None or record.state != JobState.RUNNING or not changed:
        if record is not None and changed and record.error_code == "DEAD_LETTER":
            runtime.store.dead_letter(job_id)
        return None
    return record


def finish(runtime: Runtime, job_id: str, state: JobState, code: str = "", message: str = "") -> None:
    def apply(record: JobRecord) -> bool:
        if record.state.finished:
            return False
        record.finish(state, code, message)
        return True

    store_update(runtime, job_id, apply)
    runtime.metrics.jobs.add(1, {"state": state.value})


def record_result(runtime: Runtime, job_id: str, result: EngineResult) -> None:
    stored = []
    with tracer().start_as_current_span("upload", attributes={"job.id": job_id, "images": len(result.images)}):
        for index, image in enumerate(result.images):
            check_cancel(runtime, job_id)
            key = output_key(job_id, index)
            put = lambda k=key, i=image: runtime.objects.put_image(k, i)  # noqa: E731
            stored.append(with_s3_retries(runtime, job_id, f"uploading {key}", put))

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

    store_update(runtime, job_id, apply)
    runtime.metrics.jobs.add(1, {"state": JobState.SUCCEEDED.value})
    runtime.metrics.duration.record(result.seconds)
    if result.seconds > 0:
        runtime.metrics.tokens_per_s.record(result.generated_tokens / result.seconds)


class RetrievalUnavailable(Exception):
    """The retrieval memory failed while a job searched it (a Qdrant outage)."""


@contextlib.contextmanager
def stage_span(name: str, attributes: Mapping[str, object]) -> Iterator[None]:
    """The engine's stage hook: a span per stage; an error inside "retrieval" becomes RetrievalUnavailable (a
    request's own error, a cancel or a time limit pass through)."""
    with tracer().start_as_current_span(name, attributes=dict(attributes)):  # type: ignore[arg-type]
        try:
            yield
        except (JobCancelled, JobTimedOut, ValueError):
            raise
        except Exception as error:
            if name != "retrieval":
                raise
            log.warning("retrieval failed (%s)", type(error).__name__, exc_info=error)
            raise RetrievalUnavailable() from error


def run_engine(
    runtime: Runtime, job_id: str, request: JobRequest, reporter: JobReporter, plain: bool = False
) -> tuple[EngineResult, bool]:
    """The engine's result (`plain`: without the model's policy for the kind), retrying a retrieval outage until its
    deadline; past it, by `retrieval_outage`: fail (DeadlineExceeded) or run without retrieval. Returns (result,
    whether retrieval was skipped)."""

    def run(job: JobRequest) -> EngineResult:
        return runtime.engine.run(
            job, progress=reporter.progress, should_cancel=reporter.should_cancel, stage=stage_span, plain=plain
        )

    try:
        result = retry_call(
            lambda: run(request),
            what=f"retrieval for job {job_id}",
            deadline_s=runtime.settings.retrieval_retry_deadline_s,
            retry_on=(RetrievalUnavailable,),
            between=lambda: check_cancel(runtime, job_id),
            service="the retrieval memory",
        )
        return result, False
    except DeadlineExceeded:
        if runtime.settings.retrieval_outage != "skip" or not hasattr(request, "sampling"):
            raise
    log.warning("job %s: the retrieval memory is unavailable; generating without retrieval", job_id)
    without = dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, retrieved_k=0))
    return run(without), True


def mark_retrieval_skipped(record: JobRecord) -> bool:
    if record.state.finished:
        return False
    record.retrieval_skipped = True
    return True


def run_job(runtime: Runtime, job_id: str, trace_context: Mapping[str, str] | None) -> str:
    """Run one job to a final state; returns that state (or "skipped": a message for a job that is finished or
    leased by another worker, which gets no `worker.run_job` span: one span per delivery that ran)."""
    if job_store_call(runtime, job_id, lambda: runtime.store.cancel_requested(job_id)):
        with tracer().start_as_current_span("worker.run_job", context=extract_context(trace_context)):
            finish(runtime, job_id, JobState.CANCELLED, "CANCELLED", "cancelled before it started")
        return JobState.CANCELLED.value
    record = job_store_call(runtime, job_id, lambda: claim(runtime, job_id))
    if record is None:
        log.info("job %s: finished or running elsewhere, message skipped", job_id)
        return "skipped"
    dispatch_next(runtime)  # fair dispatch: this job left the window, the next one waits at the broker
    attributes = {"job.id": job_id, "job.kind": record.kind}
    context = extract_context(trace_context or record.trace_context)  # a job dispatched later: its submit's trace
    with tracer().start_as_current_span("worker.run_job", context=context, attributes=attributes) as span:
        runtime.running.add(job_id, runtime.settings)  # its lease is renewed, its time limits kept from now on
        try:
            with reading_as(record.tenant):  # the job retrieves only its tenant's and the base memory's documents
                return run_claimed(runtime, job_id, record, span)
        finally:
            runtime.running.remove(job_id)


def run_claimed(runtime: Runtime, job_id: str, record: JobRecord, span: Any) -> str:
    """Run a claimed job to a final state; returns that state."""
    reporter = JobReporter(runtime, job_id)
    try:
        wire = jobs_pb2.JobRequest.FromString(record.request)
        request = request_to_domain(wire)
        if any(isinstance(getattr(request, name), ImageRef) for name in kind_of(request).images):
            with tracer().start_as_current_span("fetch_inputs"):
                request = fetch_inputs(runtime, job_id, request)
        result, skipped = run_engine(runtime, job_id, request, reporter, plain=wire.plain)
        if skipped:
            span.set_attribute("retrieval.skipped", True)
            store_update(runtime, job_id, mark_retrieval_skipped)
        span.set_attribute("tokens.generated", result.generated_tokens)
        record_result(runtime, job_id, result)
        return JobState.SUCCEEDED.value
    except JobCancelled:
        if reporter.superseded:
            log.info("job %s: finished by another delivery meanwhile; this run stopped", job_id)
            return "skipped"
        if not reporter.timed_out:
            finish(runtime, job_id, JobState.CANCELLED, "CANCELLED", "cancelled while running")
            return JobState.CANCELLED.value
        fail_timed_out(runtime, job_id)
    except JobTimedOut:
        fail_timed_out(runtime, job_id)
    except UnsupportedJobKind as error:
        finish(runtime, job_id, JobState.FAILED, "UNIMPLEMENTED", str(error))
    except DeadlineExceeded as error:
        log.warning("job %s: %s", job_id, error, exc_info=error.__cause__)
        message = f"{error.service} was unavailable for {error.deadline_s:g} s; retry the job"
        finish(runtime, job_id, JobState.FAILED, "UNAVAILABLE", message)
    except ValueError as error:
        finish(runtime, job_id, JobState.FAILED, "INVALID_ARGUMENT", str(error))
    except Exception as error:
        log.exception("job %s failed", job_id)
        span.record_exception(error)
        finish(runtime, job_id, JobState.FAILED, "INTERNAL", INTERNAL_MESSAGE)
    return JobState.FAILED.value


def fail_timed_out(runtime: Runtime, job_id: str) -> None:
    limit = runtime.settings.soft_time_limit_s
    finish(runtime, job_id, JobState.FAILED, "DEADLINE_EXCEEDED", f"the job ran past {limit} s")
