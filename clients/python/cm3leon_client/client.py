"""The gateway's client, synchronous (`Client`) and asyncio (`AsyncClient`), and download helpers.

    with Client("127.0.0.1:50051", api_key="dev-key") as client:
        job = client.submit(text_to_image("a large red circle at the top left", seed=1))
        job = client.wait(job.job_id, on_update=lambda j: print(j.progress.tokens_done))
        download(job.result.images[0], "out.png")

Resilient by default (see `channel`): UNAVAILABLE calls are retried with backoff, every unary call has a
deadline, submits carry a `request_id` (so a retried submit never runs twice), and `wait` resumes `WatchJob`
after the last sequence it saw when the stream breaks.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict

from cm3leon_client.api import common_pb2, corpus_pb2, corpus_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from cm3leon_client.builders import image_input
from cm3leon_client.channel import DEFAULT_TARGET, Connection

FINISHED = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)
# `wait` reconnects this many times in a row on UNAVAILABLE, waiting 0.2, 0.4, ... up to 5 s in between.
RECONNECT_ATTEMPTS = 8
RECONNECT_BASE_S = 0.2
RECONNECT_MAX_S = 5.0
# Each WatchJob stream has this deadline; `wait` then resumes with a new one (no stream hangs on a dead peer).
WATCH_STREAM_S = 300.0
DOWNLOAD_TIMEOUT_S = 60.0


def new_request_id() -> str:
    return uuid.uuid4().hex


def reconnect_delay(failures: int) -> float:
    return min(RECONNECT_MAX_S, RECONNECT_BASE_S * 2 ** (failures - 1))


def download(ref: common_pb2.ObjectRef, path: str | Path, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch an output through its presigned URL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(ref.url, timeout=timeout_s) as response:  # noqa: S310 (a URL from the gateway)
        path.write_bytes(response.read())
    return path


def download_outputs(job: jobs_pb2.Job, directory: str | Path) -> list[Path]:
    """Every output image of a job (`JOB_ID-N.png`) and the job itself as JSON (`JOB_ID.json`) in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [download(image, directory / f"{job.job_id}-{i}.png") for i, image in enumerate(job.result.images)]
    record = directory / f"{job.job_id}.json"
    record.write_text(json.dumps(MessageToDict(job), indent=2) + "\n")
    return [*paths, record]


class WaitState:
    """What `wait` has seen so far: the last sequence (to resume after) and the broken streams in a row."""

    def __init__(self, timeout_s: float | None, after_sequence: int = 0) -> None:
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.sequence = after_sequence
        self.failures = 0

    def stream_timeout(self) -> float:
        if self.deadline is None:
            return WATCH_STREAM_S
        return max(0.0, min(WATCH_STREAM_S, self.deadline - time.monotonic()))

    def seen(self, job: jobs_pb2.Job) -> bool:
        """Record a snapshot; True when the job has finished."""
        self.sequence = max(self.sequence, job.sequence)
        self.failures = 0
        return job.state in FINISHED

    def retry_after(self, error: grpc.RpcError) -> float:
        """How long to wait before resuming after `error`; raises it when it is not worth a retry."""
        code = error.code()  # type: ignore[attr-defined]
        in_time = self.deadline is None or time.monotonic() < self.deadline
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and in_time:
            return 0.0  # only this stream's own deadline passed
        self.failures += 1
        if code != grpc.StatusCode.UNAVAILABLE or self.failures >= RECONNECT_ATTEMPTS or not in_time:
            raise error
        return reconnect_delay(self.failures)


class GatewayStubs:
    """The two services' stubs on one channel of `connection` (asyncio's when `asynchronous`), with the key's
    metadata and the default deadline: what `Client` and `AsyncClient` share."""

    asynchronous = False

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        api_key: str = "",
        timeout_s: float = 30.0,
        *,
        connection: Connection | None = None,
    ) -> None:
        self.connection = connection or Connection(target=target, api_key=api_key, timeout_s=timeout_s)
        self.channel = self.connection.aio_channel() if self.asynchronous else self.connection.channel()
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.corpus = corpus_pb2_grpc.CorpusServiceStub(self.channel)
        self.metadata = self.connection.metadata()
        self.timeout_s = self.connection.timeout_s


class Client(GatewayStubs):
    """The gateway's API, synchronously. `Client(target, api_key)` or `Client(connection=Connection(...))`."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def submit(self, request: jobs_pb2.JobRequest, request_id: str = "") -> jobs_pb2.Job:
        """Enqueue a job. Without a `request_id` one is made, so that a retried submit returns the same job."""
        message = jobs_pb2.SubmitJobRequest(request_id=request_id or new_request_id(), request=request)
        return self.jobs.SubmitJob(message, metadata=self.metadata, timeout=self.timeout_s)

    def get(self, job_id: str) -> jobs_pb2.Job:
        return self.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=self.metadata, timeout=self.timeout_s)

    def watch(
        self, job_id: str, after_sequence: int = 0, timeout_s: float | None = WATCH_STREAM_S
    ) -> Iterator[jobs_pb2.Job]:
        """The job's snapshots until it finishes (one stream; `wait` resumes broken ones)."""
        message = jobs_pb2.WatchJobRequest(job_id=job_id, after_sequence=after_sequence)
        return self.jobs.WatchJob(message, metadata=self.metadata, timeout=timeout_s)

    def wait(
        self,
        job_id: str,
        on_update: Callable[[jobs_pb2.Job], None] | None = None,
        timeout_s: float | None = None,
        after_sequence: int = 0,
    ) -> jobs_pb2.Job:
        """Watch until the job finishes, at most `timeout_s` (None: no limit), from the snapshot after
        `after_sequence`; a broken stream (UNAVAILABLE: a gateway restarting) is resumed after the last sequence
        seen, with backoff."""
        state = WaitState(timeout_s, after_sequence)
        while True:
            try:
                for job in self.watch(job_id, state.sequence, state.stream_timeout()):
                    if on_update:
                        on_update(job)
                    if state.seen(job):
                        return job
                job = self.get(job_id)  # the stream ended without a final snapshot: ask for the current one
                if state.seen(job):
                    return job
            except grpc.RpcError as error:
                time.sleep(state.retry_after(error))

    def cancel(self, job_id: str) -> jobs_pb2.Job:
        message = jobs_pb2.CancelJobRequest(job_id=job_id)
        return self.jobs.CancelJob(message, metadata=self.metadata, timeout=self.timeout_s)

    def list(self, states: Sequence[int] = (), page_size: int = 0, page_token: str = "") -> jobs_pb2.ListJobsResponse:
        message = jobs_pb2.ListJobsRequest(states=states, page_size=page_size, page_token=page_token)
        return self.jobs.ListJobs(message, metadata=self.metadata, timeout=self.timeout_s)

    def add_documents(self, documents: Sequence[corpus_pb2.CorpusDocument]) -> corpus_pb2.AddDocumentsResponse:
        message = corpus_pb2.AddDocumentsRequest(documents=documents)
        return self.corpus.AddDocuments(message, metadata=self.metadata, timeout=self.timeout_s)

    def search(
        self, text: str = "", image: bytes | str | Path | None = None, k: int = 0
    ) -> corpus_pb2.SearchDocumentsResponse:
        message = corpus_pb2.SearchDocumentsRequest(text=text, k=k, image=image_input(image) if image else None)
        return self.corpus.SearchDocuments(message, metadata=self.metadata, timeout=self.timeout_s)

    def delete_documents(self, doc_ids: Sequence[str]) -> corpus_pb2.DeleteDocumentsResponse:
        message = corpus_pb2.DeleteDocumentsRequest(doc_ids=doc_ids)
        return self.corpus.DeleteDocuments(message, metadata=self.metadata, timeout=self.timeout_s)


class AsyncClient(GatewayStubs):
    """The gateway's API on asyncio, with the same channel policy and `wait` semantics as `Client`."""

    asynchronous = True

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def submit(self, request: jobs_pb2.JobRequest, request_id: str = "") -> jobs_pb2.Job:
        message = jobs_pb2.SubmitJobRequest(request_id=request_id or new_request_id(), request=request)
        return await self.jobs.SubmitJob(message, metadata=self.metadata, timeout=self.timeout_s)

    async def get(self, job_id: str) -> jobs_pb2.Job:
        message = jobs_pb2.GetJobRequest(job_id=job_id)
        return await self.jobs.GetJob(message, metadata=self.metadata, timeout=self.timeout_s)

    async def watch(
        self, job_id: str, after_sequence: int = 0, timeout_s: float | None = WATCH_STREAM_S
    ) -> AsyncIterator[jobs_pb2.Job]:
        message = jobs_pb2.WatchJobRequest(job_id=job_id, after_sequence=after_sequence)
        async for job in self.jobs.WatchJob(message, metadata=self.metadata, timeout=timeout_s):
            yield job

    async def wait(
        self,
        job_id: str,
        on_update: Callable[[jobs_pb2.Job], None] | None = None,
        timeout_s: float | None = None,
        after_sequence: int = 0,
    ) -> jobs_pb2.Job:
        state = WaitState(timeout_s, after_sequence)
        while True:
            try:
                async for job in self.watch(job_id, state.sequence, state.stream_timeout()):
                    if on_update:
                        on_update(job)
                    if state.seen(job):
                        return job
                job = await self.get(job_id)
                if state.seen(job):
                    return job
            except grpc.RpcError as error:
                await asyncio.sleep(state.retry_after(error))

    async def cancel(self, job_id: str) -> jobs_pb2.Job:
        message = jobs_pb2.CancelJobRequest(job_id=job_id)
        return await self.jobs.CancelJob(message, metadata=self.metadata, timeout=self.timeout_s)

    async def list(
        self, states: Sequence[int] = (), page_size: int = 0, page_token: str = ""
    ) -> jobs_pb2.ListJobsResponse:
        message = jobs_pb2.ListJobsRequest(states=states, page_size=page_size, page_token=page_token)
        return await self.jobs.ListJobs(message, metadata=self.metadata, timeout=self.timeout_s)

    async def add_documents(self, documents: Sequence[corpus_pb2.CorpusDocument]) -> corpus_pb2.AddDocumentsResponse:
        message = corpus_pb2.AddDocumentsRequest(documents=documents)
        return await self.corpus.AddDocuments(message, metadata=self.metadata, timeout=self.timeout_s)

    async def search(
        self, text: str = "", image: bytes | str | Path | None = None, k: int = 0
    ) -> corpus_pb2.SearchDocumentsResponse:
        message = corpus_pb2.SearchDocumentsRequest(text=text, k=k, image=image_input(image) if image else None)
        return await self.corpus.SearchDocuments(message, metadata=self.metadata, timeout=self.timeout_s)

    async def delete_documents(self, doc_ids: Sequence[str]) -> corpus_pb2.DeleteDocumentsResponse:
        message = corpus_pb2.DeleteDocumentsRequest(doc_ids=doc_ids)
        return await self.corpus.DeleteDocuments(message, metadata=self.metadata, timeout=self.timeout_s)
