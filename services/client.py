"""Python client of the gateway, synchronous (`Client`) and asyncio (`AsyncClient`), plus typed request builders.

with Client("127.0.0.1:50051", api_key="dev-key") as client:
    job = client.submit(text_to_image("a large red circle at the top left", seed=1), request_id="r1")
    job = client.wait(job.job_id, on_update=lambda j: print(j.progress.tokens_done))
    client.download(job.result.images[0], "out.png")
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import grpc

from services.api import common_pb2, corpus_pb2, corpus_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from services.builders import (  # noqa: F401 (re-exported: `from services import client as api; api.caption(...)`)
    box,
    caption,
    edit,
    grounded_generation,
    image_input,
    infill,
    sampling,
    segmentation,
    structure_guided,
    text_rendering,
    text_to_image,
    visual_question,
)
from services.interceptors import API_KEY_HEADER

FINISHED = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)
MESSAGE_LIMIT = 16 * 1024 * 1024
# Client.wait reconnects this many times on UNAVAILABLE, waiting 0.2, 0.4, ... up to 5 s in between.
RECONNECT_ATTEMPTS = 8
RECONNECT_BASE_S = 0.2
RECONNECT_MAX_S = 5.0


def download(ref: common_pb2.ObjectRef, path: str | Path) -> Path:
    """Fetch an output through its presigned URL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(ref.url) as response:  # noqa: S310 (a presigned URL from our own gateway)
        path.write_bytes(response.read())
    return path


def channel_options() -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", MESSAGE_LIMIT), ("grpc.max_send_message_length", MESSAGE_LIMIT)]


# ----- clients -----


class Client:
    def __init__(self, target: str, api_key: str, timeout_s: float = 30.0) -> None:
        self.channel = grpc.insecure_channel(target, options=channel_options())
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.corpus = corpus_pb2_grpc.CorpusServiceStub(self.channel)
        self.metadata = ((API_KEY_HEADER, api_key),)
        self.timeout_s = timeout_s

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def submit(self, request: jobs_pb2.JobRequest, request_id: str = "") -> jobs_pb2.Job:
        message = jobs_pb2.SubmitJobRequest(request_id=request_id, request=request)
        return self.jobs.SubmitJob(message, metadata=self.metadata, timeout=self.timeout_s)

    def get(self, job_id: str) -> jobs_pb2.Job:
        return self.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=self.metadata, timeout=self.timeout_s)

    def watch(self, job_id: str, after_sequence: int = 0, timeout_s: float | None = None) -> Iterator[jobs_pb2.Job]:
        message = jobs_pb2.WatchJobRequest(job_id=job_id, after_sequence=after_sequence)
        return self.jobs.WatchJob(message, metadata=self.metadata, timeout=timeout_s)

    def wait(
        self, job_id: str, on_update: Callable[[jobs_pb2.Job], None] | None = None, timeout_s: float | None = None
    ) -> jobs_pb2.Job:
        """Watch until the job finishes; when the stream breaks (UNAVAILABLE: a gateway restarting), reconnect
        with backoff and resume after the last sequence seen."""
        last = None
        for attempt in range(RECONNECT_ATTEMPTS):
            try:
                for job in self.watch(job_id, last.sequence if last else 0, timeout_s):
                    last = job
                    if on_update:
                        on_update(job)
                    if job.state in FINISHED:
                        return job
                return self.get(job_id)  # the stream ended without a final snapshot: ask for the current one
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == RECONNECT_ATTEMPTS:  # type: ignore[attr-defined]
                    raise
                time.sleep(min(RECONNECT_MAX_S, RECONNECT_BASE_S * 2**attempt))
        raise AssertionError("unreachable")

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


class AsyncClient:
    def __init__(self, target: str, api_key: str, timeout_s: float = 30.0) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=channel_options())
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.corpus = corpus_pb2_grpc.CorpusServiceStub(self.channel)
        self.metadata = ((API_KEY_HEADER, api_key),)
        self.timeout_s = timeout_s

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()

    async def submit(self, request: jobs_pb2.JobRequest, request_id: str = "") -> jobs_pb2.Job:
        message = jobs_pb2.SubmitJobRequest(request_id=request_id, request=request)
        return await self.jobs.SubmitJob(message, metadata=self.metadata, timeout=self.timeout_s)

    async def get(self, job_id: str) -> jobs_pb2.Job:
        return await self.jobs.GetJob(
            jobs_pb2.GetJobRequest(job_id=job_id), metadata=self.metadata, timeout=self.timeout_s
        )

    async def watch(self, job_id: str, after_sequence: int = 0) -> AsyncIterator[jobs_pb2.Job]:
        message = jobs_pb2.WatchJobRequest(job_id=job_id, after_sequence=after_sequence)
        async for job in self.jobs.WatchJob(message, metadata=self.metadata):
            yield job

    async def wait(self, job_id: str, on_update: Callable[[jobs_pb2.Job], None] | None = None) -> jobs_pb2.Job:
        async for job in self.watch(job_id):
            if on_update:
                on_update(job)
            if job.state in FINISHED:
                return job
        return await self.get(job_id)

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
