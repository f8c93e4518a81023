"""The Celery tasks: thin and typed; the work is in `execute.py` (jobs) and `cm3leon.inference.corpus`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_init

from services.corpus_calls import answer
from services.errors import Unimplemented
from services.queue import CORPUS_ADD, CORPUS_DELETE, CORPUS_SEARCH, RUN_JOB
from worker.dispatching import dispatch_next
from worker.runtime import get_runtime

log = logging.getLogger(__name__)


@worker_init.connect
def load_model(**_: object) -> None:
    """The worker process loads (and warms up) the model once, before it takes a message; its job threads share
    it (`worker.runtime`)."""
    get_runtime()


def run_job(job_id: str, trace_context: dict[str, str] | None = None) -> str:
    from worker.execute import run_job as execute

    runtime = get_runtime()
    try:
        return execute(runtime, job_id, trace_context)
    finally:
        dispatch_next(runtime)  # fair dispatch: a place in the window and in the tenant's running cap is free


def corpus_add(documents: list[dict[str, str | None]], owner: str) -> int:
    """documents: [{"doc_id", "text" (or None), "image_key" (or None)}], written as `owner`'s (a tenant, or ""
    for the shared base memory) -> the number of documents the owner can read afterwards."""
    from cm3leon.inference.corpus import NewDocument, add_documents

    runtime = get_runtime()
    memory, retriever = require_memory()
    new = [
        NewDocument(
            str(d["doc_id"]),
            d.get("text"),
            runtime.objects.get_image(str(d["image_key"])) if d.get("image_key") else None,
        )
        for d in documents
    ]
    return add_documents(runtime.engine, memory, retriever, new, owner)


def corpus_search(text: str | None, image_key: str | None, k: int, reader: str) -> list[dict]:
    import dataclasses

    from cm3leon.inference.corpus import search

    runtime = get_runtime()
    memory, retriever = require_memory()
    image = runtime.objects.get_image(image_key) if image_key else None
    found = search(memory, retriever, text, image, k, reader)
    return [dataclasses.asdict(doc) for doc in found]


def corpus_delete(doc_ids: list[str], owner: str) -> int:
    from cm3leon.inference.corpus import delete_documents

    memory, _ = require_memory()
    return delete_documents(memory, doc_ids, owner)


def require_memory() -> tuple:
    runtime = get_runtime()
    if runtime.memory is None or runtime.retriever is None:
        log.error(
            "a corpus call came to a worker without retrieval memory (no retriever in %s)",
            runtime.settings.retriever_dir,
        )
        raise Unimplemented("the retrieval memory is off on this deployment's workers")
    return runtime.memory, runtime.retriever


def replying(function: Callable[..., Any]) -> Callable[..., None]:
    """A corpus task: `function`'s result, or its typed error, goes to the calling gateway's reply address
    (`services.corpus_calls`), never to a result backend."""

    def task(*args: Any, reply_to: dict[str, str]) -> None:
        runtime = get_runtime()
        answer(runtime.store.client, runtime.settings.namespace, reply_to, lambda: function(*args))

    task.__name__, task.__qualname__, task.__doc__ = function.__name__, function.__qualname__, function.__doc__
    return task


def register(app: Celery) -> None:
    app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(run_job)
    for name, function in ((CORPUS_ADD, corpus_add), (CORPUS_SEARCH, corpus_search), (CORPUS_DELETE, corpus_delete)):
        app.task(name=name, ignore_result=True)(replying(function))
