"""The gRPC servicers: validate, convert protobuf <-> domain, and call the job store, object store and queue.

No decisions about jobs live here beyond admission (auth is the interceptor's, running them is the worker's).
Blocking clients (MinIO, Celery's publisher) run in threads so the event loop never waits on them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import redis
from celery import Celery

from cm3leon_client.api import common_pb2, corpus_pb2, corpus_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from services import convert
from services.auth import current_principal  # security: scoped keys, tenant-owned documents
from services.bounds import check_doc_ids, check_job_id, check_list_request, check_stored_size, without_unknown_fields
from services.corpus_calls import CorpusCalls
from services.cost import job_cost, merged_profile
from services.dispatch import dispatch_calls, window_of
from services.errors import InvalidArgument, NotFound, QueueFull, Unavailable, Unimplemented
from services.images import decode_image
from services.interceptors import current_tenant
from services.jobstore import AsyncJobStore, created_job, decode_record, same_request
from services.keys import queue_for, queue_names
from services.objectstore import REFERENCEABLE_KEY, ObjectStore, input_key
from services.presence import live_workers_async
from services.queue import CORPUS_ADD, CORPUS_DELETE, CORPUS_SEARCH, RUN_JOB
from services.quotas import Admission
from services.records import JobRecord, JobState, new_job_id
from services.settings import GatewaySettings
from services.streams import WATCHES
from services.submission import Steps, admission_steps, creation_steps, refused
from services.telemetry import Metrics, inject_context, tracer
from services.tenancy import check_memory_access, corpus_owner, corpus_reader
from services.validation import check_request_id, check_text, validate_request

log = logging.getLogger(__name__)
# Drawn seeds leave headroom below decoding's 63-bit seeds: image i of a job uses seed + i.
ASSIGNED_SEED_BITS = 59
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
MAX_CORPUS_BATCH = 256
# What live workers declared is read from the presence hash at most this often (heartbeats come every 5 s).
WORKERS_CACHE_S = 1.0
STEPS = ("rate", "reserve")  # the two admission steps of a submit (`services.quotas`)
DOC_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class Gateway:
    """What both servicers share: settings, stores, the Celery app."""

    def __init__(self, settings: GatewaySettings, store: AsyncJobStore, objects: ObjectStore, celery: Celery) -> None:
        self.settings, self.store, self.objects, self.celery = settings, store, objects, celery
        self.metrics = Metrics()
        self.workers_seen: tuple[float, list[dict[str, Any]]] = (-math.inf, [])  # (when read, their entries)
        # Job messages are published from one thread of their own: the event loop never blocks on the broker,
        # and publishes do not contend with each other (and the loop) for the GIL from many threads.
        self.publisher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cm3leon-publish")

    async def job_proto(self, record: JobRecord) -> jobs_pb2.Job:
        position = await self.store.queue_position(record)
        return convert.record_to_proto(record, self.objects.url, position)

    async def check_reference(self, path: str, key: str, tenant: str) -> None:
        """A referenced object must be an input/output of one of the caller's jobs, and exist."""
        match = REFERENCEABLE_KEY.match(key)
        if match is None:
            raise InvalidArgument(path, "not the key of an input or output of one of your jobs")
        try:
            await self.store.get(match.group(1), tenant)
        except NotFound as error:
            raise InvalidArgument(path, f"no object {key!r} among your jobs") from error
        if not await asyncio.to_thread(self.objects.exists, key):
            raise InvalidArgument(path, f"no object {key!r} among your jobs")

    async def workers(self) -> list[dict[str, Any]]:
        """What the live workers declared (their models' kinds and cost profiles). Read from the presence hash at
        most every `WORKERS_CACHE_S`: one read per submit would cost a round trip and the decoding of every
        worker's entry, for an answer the heartbeats refresh only every few seconds."""
        read_at, workers = self.workers_seen
        if time.monotonic() - read_at >= WORKERS_CACHE_S:
            workers = list((await live_workers_async(self.store.client, self.store.keys)).values())
            self.workers_seen = (time.monotonic(), workers)
        return workers

    def cost(self, request: jobs_pb2.JobRequest, workers: list[dict[str, Any]]) -> int:
        """The request's fair-use cost (`services.cost`), by the live workers' models or the settings."""
        settings = self.settings
        return job_cost(request, merged_profile(workers), settings.cost_image_tokens, settings.cost_text_tokens)


def supported_kinds(workers: list[dict[str, Any]]) -> set[str] | None:
    """Kinds some live worker's model runs; None while no worker has reported (jobs wait in the queue)."""
    return {kind for info in workers for kind in info["kinds"]} if workers else None


async def publish_job(gw: Gateway, record: JobRecord) -> None:
    """Hand a dispatched job to the broker (raises when it refuses) and clear its outbox mark (a failure there
    only costs a second publish by the sweeper: claiming is idempotent)."""
    publish = functools.partial(
        gw.celery.send_task,
        RUN_JOB,
        args=[record.job_id, record.trace_context or None],
        queue=record.queue,
        task_id=record.job_id,
        ignore_result=True,  # else Celery subscribes to a result channel per job (and waits on an outage)
    )
    await asyncio.get_running_loop().run_in_executor(gw.publisher, publish)
    try:
        await gw.store.mark_published(record.job_id, record.queue)
    except redis.RedisError:
        log.warning("clearing the outbox mark of job %s failed", record.job_id)


async def dispatch_jobs(gw: Gateway, workers: list[dict[str, Any]] | None = None) -> bool:
    """Dispatch what the window and the tenants' running caps allow (`services.dispatch`) and publish it; False
    when the broker refused a publish (that job and the rest wait in the outbox for the reaper). `workers`: the
    live workers' entries when the caller has just read them."""
    client, keys = gw.store.client, gw.store.keys
    workers = await gw.workers() if workers is None else workers
    window = window_of(gw.settings, workers)
    taken = [raw for call in dispatch_calls(keys, gw.settings, window) for raw in await client.eval(*call)]
    return await publish_dispatched(gw, [await client.get(keys.job(raw.decode())) for raw in taken])


async def publish_dispatched(gw: Gateway, records: Sequence[bytes | None]) -> bool:
    """Publish the dispatched jobs (their stored records, in dispatch order) that are still queued; False when the
    broker refused one (it and the rest wait in the outbox for the reaper)."""
    for raw in records:
        record = decode_record(raw) if raw else None
        if record is None or record.state != JobState.QUEUED:
            continue
        try:
            await publish_job(gw, record)
        except Exception as error:  # kombu's and redis's errors alike: the broker is away
            log.warning("publishing job %s failed: %r", record.job_id, error)
            return False
    return True


async def enqueue_new_job(gw: Gateway, record: JobRecord, dispatched: Sequence[bytes | None]) -> None:
    """After a new job is stored and the dispatcher ran: publish what it handed out (the new job goes out now
    when its tenant's turn and running cap allow). When the broker refuses a publish, the new job is withdrawn
    unless it went out (its request id freed, so a retry creates a fresh job) and the caller gets UNAVAILABLE; when
    even that fails, the reaper dispatches it later (a retry with the request id re-attaches to it)."""
    with tracer().start_as_current_span("enqueue", attributes={"job.id": record.job_id, "job.kind": record.kind}):
        if await publish_dispatched(gw, dispatched):
            return
        try:
            withdrawn = await gw.store.withdraw(record)
        except redis.RedisError:
            log.warning("withdrawing job %s failed: the reaper publishes it", record.job_id)
            withdrawn = False
        if withdrawn:
            raise Unavailable("the job queue is unavailable; retry later (the request_id is free)")


def settle(
    gw: Gateway,
    replies: dict[str, list[Any]],
    admissions: dict[str, Admission],
    context: grpc.aio.ServicerContext,
    payload_hash: str,
    request_id: str,
    record: JobRecord | None = None,
) -> JobRecord | None:
    """Read the steps' replies: raise the refusal of the step that stopped, or return the job a request id already
    names (None when the steps went through)."""
    if "room" in replies:
        gw.metrics.queue_depth.set(int(replies["room"][1]))
    if refused(replies, "existing"):
        return same_request(decode_record(replies["existing"][1]), payload_hash, request_id)
    if refused(replies, "room"):
        queued, limit = int(replies["room"][1]), gw.settings.max_queued_jobs
        raise QueueFull(f"{queued} jobs are queued (limit {limit}); retry later")
    for label, admission in admissions.items():
        if label in replies:
            admission.check(replies[label], context)
    if record is not None and "create" in replies:
        found, created = created_job(record, replies["create"])
        return None if created else found
    return None


async def store_images(
    gw: Gateway, accepted: jobs_pb2.JobRequest, kind: str, images: Sequence[Any], job_id: str, tenant: str
) -> None:
    """Inline image bytes -> the object store; the accepted request carries keys only (references are checked)."""
    for image in images:
        if image.message.WhichOneof("source") == "object_key":
            await gw.check_reference(f"{image.path}.object_key", image.message.object_key, tenant)
            continue
        png = await decode_image(f"{image.path}.data", image.message.data, gw.settings)
        field = image.path.rsplit(".", 1)[-1]
        key = input_key(job_id, field)
        await asyncio.to_thread(gw.objects.put, key, png)
        target = getattr(getattr(accepted, kind), field)
        target.Clear()
        target.object_key = key


def assign_seed(body: Any) -> int:
    """The job's seed: the client's, or one drawn now and written into the accepted request, so a redelivered
    job decodes exactly the same outputs (deterministic keys, same bytes)."""
    if not hasattr(body, "sampling"):
        return 0
    if not body.sampling.HasField("seed"):
        body.sampling.seed = secrets.randbits(ASSIGNED_SEED_BITS)
    return body.sampling.seed


def fingerprint(request: jobs_pb2.JobRequest) -> str:
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def SubmitJob(self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.Job:
        gw, tenant, request_id = self.gw, current_tenant(), request.request_id
        check_request_id(request_id)
        kind, images = validate_request(request.request, gw.settings)
        check_memory_access(request.request, current_principal(), gw.settings)
        payload_hash = fingerprint(request.request)
        workers = await gw.workers()
        supported = supported_kinds(workers)
        if supported is not None and kind not in supported:
            found = await gw.store.existing(tenant, request_id, payload_hash) if request_id else None
            if found is not None:
                return await gw.job_proto(found)
            raise Unimplemented(
                f"job kind {kind!r} is not supported by any worker's model yet (they run: {sorted(supported)})"
            )
        job_id, cost = new_job_id(), gw.cost(request.request, workers)
        admissions = {step: Admission(step, gw.settings, gw.settings.namespace, tenant, job_id, cost) for step in STEPS}
        accepted = jobs_pb2.JobRequest()
        accepted.CopyFrom(request.request)
        without_unknown_fields(accepted)  # security: never stored
        seed = assign_seed(getattr(accepted, kind))
        store, settings = gw.store, gw.settings
        steps = admission_steps(store.keys, settings.max_queued_jobs, tenant, request_id, admissions["rate"])
        if images:  # the rate is charged before any decoding; the images are stored before the job
            found = settle(gw, await steps.run(gw.store.client), admissions, context, payload_hash, request_id)
            if found is not None:
                return await gw.job_proto(found)
            await store_images(gw, accepted, kind, images, job_id, tenant)
            steps = Steps()
        check_stored_size("request", accepted)
        record = JobRecord(
            job_id=job_id,
            tenant=tenant,
            kind=kind,
            queue=queue_for(gw.settings.namespace, kind),
            request=accepted.SerializeToString(),
            request_id=request_id,
            fingerprint=payload_hash,
            seed=seed,
            cost=cost,
            trace_context=inject_context(),
        )
        window = window_of(settings, workers)
        creation_steps(steps, store.keys, settings, store.ttl_s, record, admissions["reserve"], window)
        replies = await steps.run(gw.store.client)
        found = settle(gw, replies, admissions, context, payload_hash, request_id, record)
        if found is not None:
            return await gw.job_proto(found)
        gw.metrics.jobs.add(1, {"kind": kind, "state": JobState.QUEUED.value})
        await enqueue_new_job(gw, record, replies["dispatch"][2])
        rank = int(replies["rank"][1])
        return convert.record_to_proto(record, gw.objects.url, rank + 1 if rank >= 0 else 0)

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.Job:
        check_job_id(request.job_id)
        return await self.gw.job_proto(await self.gw.store.get(request.job_id, current_tenant()))

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.Job]:
        check_job_id(request.job_id)
        async with WATCHES.slot(current_tenant(), self.gw.settings):  # security: streams per tenant are capped
            # The stream holds no Redis connection: the store's watch hub reads every stream over a few.
            watch = self.gw.store.watch(request.job_id, current_tenant(), request.after_sequence)
            async with contextlib.aclosing(watch) as snapshots:  # a cancelled RPC unregisters its watcher now
                async for record in snapshots:
                    yield await self.gw.job_proto(record)

    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.Job:
        check_job_id(request.job_id)
        record = await self.gw.store.cancel(request.job_id, current_tenant())
        if record.state == JobState.CANCELLED:  # it was queued: drop the message too (the flag covers a miss)
            try:
                await asyncio.to_thread(self.gw.celery.control.revoke, record.job_id)
            except Exception as error:  # the cancel took effect: a worker that takes the message skips the job
                log.warning("revoking job %s failed (%s); its cancel flag stands", record.job_id, error)
            await self.dispatch_after_cancel()
        return await self.gw.job_proto(record)

    async def dispatch_after_cancel(self) -> None:
        """A cancelled queued job may free a place in the dispatch window: the next job goes out (best-effort: the
        reaper's dispatch follows anyway)."""
        try:
            await dispatch_jobs(self.gw)
        except Exception as error:
            log.warning("dispatching after a cancel failed (%s)", type(error).__name__)

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must lie in [0, {MAX_PAGE_SIZE}], got {request.page_size}")
        check_list_request(request.states, request.page_token)
        states = []
        for index, state in enumerate(request.states):
            if state not in convert.STATES_FROM_PROTO:
                raise InvalidArgument(f"states[{index}]", f"not a job state: {state}")
            states.append(convert.STATES_FROM_PROTO[state])
        records, token = await self.gw.store.list(
            current_tenant(), states, request.page_size or DEFAULT_PAGE_SIZE, request.page_token
        )
        jobs = [await self.gw.job_proto(record) for record in records]
        return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)


class CorpusServicer(corpus_pb2_grpc.CorpusServiceServicer):
    """The memory lives with the retriever on the workers: each call is a task on the corpus queue."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.calls = CorpusCalls(gateway.settings)  # replies over Redis, never Celery's result backend

    async def call(self, task: str, *args: Any) -> Any:
        async with self.calls.slot(current_tenant(), self.gw.settings):  # security: per-tenant calls capped
            return await self.send_and_wait(task, *args)

    async def send_and_wait(self, task: str, *args: Any) -> Any:
        """Send the task with a fresh reply address and await its reply (on the event loop, no thread waits)."""
        timeout_s = self.gw.settings.corpus_timeout_s
        async with self.calls.expecting() as (reply_to, reply):
            await asyncio.to_thread(
                self.gw.celery.send_task,
                task,
                args=list(args),
                kwargs={"reply_to": reply_to},
                queue=queue_names(self.gw.settings.namespace)["corpus"],
                ignore_result=True,
            )
            try:
                return await self.calls.result(reply, timeout_s)
            except TimeoutError as error:
                raise Unavailable(f"no worker answered {task} within {timeout_s} s") from error

    async def upload(self, path: str, image: common_pb2.ImageInput) -> str | None:
        source = image.WhichOneof("source")
        if source is None:
            return None
        if source == "object_key":
            await self.gw.check_reference(f"{path}.object_key", image.object_key, current_tenant())
            return image.object_key
        png = await decode_image(f"{path}.data", image.data, self.gw.settings)
        key = f"corpus/{hashlib.sha256(png).hexdigest()}.png"
        await asyncio.to_thread(self.gw.objects.put, key, png)
        return key

    async def AddDocuments(
        self, request: corpus_pb2.AddDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> corpus_pb2.AddDocumentsResponse:
        if not 1 <= len(request.documents) <= MAX_CORPUS_BATCH:
            raise InvalidArgument("documents", f"give 1 to {MAX_CORPUS_BATCH} documents, got {len(request.documents)}")
        documents = []
        for index, doc in enumerate(request.documents):
            path = f"documents[{index}]"
            if not doc.doc_id or len(doc.doc_id) > 128 or not set(doc.doc_id) <= DOC_ID_CHARS:
                raise InvalidArgument(f"{path}.doc_id", "use 1-128 letters, digits, '-', '_' or '.'")
            check_text(f"{path}.text", doc.text, self.gw.settings, required=False)
            image_key = await self.upload(f"{path}.image", doc.image)
            if not doc.text and image_key is None:
                raise InvalidArgument(path, "a document needs text, an image, or both")
            documents.append({"doc_id": doc.doc_id, "text": doc.text or None, "image_key": image_key})
        size = await self.call(CORPUS_ADD, documents, corpus_owner(current_principal()))
        return corpus_pb2.AddDocumentsResponse(doc_ids=[d["doc_id"] for d in documents], memory_size=size)

    async def SearchDocuments(
        self, request: corpus_pb2.SearchDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> corpus_pb2.SearchDocumentsResponse:
        check_text("text", request.text, self.gw.settings, required=False)
        if not 0 <= request.k <= 32:
            raise InvalidArgument("k", f"must lie in [0, 32], got {request.k}")
        image_key = await self.upload("image", request.image)
        if not request.text and image_key is None:
            raise InvalidArgument("text", "a search needs text, an image, or both")
        reader = corpus_reader(current_principal())
        found = await self.call(CORPUS_SEARCH, request.text or None, image_key, request.k, reader)
        return corpus_pb2.SearchDocumentsResponse(
            documents=[
                common_pb2.RetrievedDocument(
                    doc_id=d["doc_id"],
                    score=d["score"],
                    text=d["text"] or "",
                    has_text=d["has_text"],
                    has_image=d["has_image"],
                )
                for d in found
            ]
        )

    async def DeleteDocuments(
        self, request: corpus_pb2.DeleteDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> corpus_pb2.DeleteDocumentsResponse:
        check_doc_ids(request.doc_ids)
        owner = corpus_owner(current_principal())
        size = await self.call(CORPUS_DELETE, list(request.doc_ids), owner)
        return corpus_pb2.DeleteDocumentsResponse(memory_size=size)
