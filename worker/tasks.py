"""The Celery tasks: thin and typed; the work is in `execute.py` (jobs) and `cm3leon.inference.corpus`."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_init

from services.queue import CORPUS_ADD, CORPUS_DELETE, CORPUS_SEARCH, RUN_JOB
from worker.runtime import get_runtime


@worker_init.connect
def load_model(**_: object) -> None:
    """The worker process loads (and warms up) the model once, before it takes a message; its job threads share
    it (`worker.runtime`)."""
    get_runtime()


def run_job(job_id: str, trace_context: dict[str, str] | None = None) -> str:
    from worker.execute import run_job as execute

    return execute(get_runtime(), job_id, trace_context)


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
    with runtime.exclusive():
        return add_documents(runtime.engine, memory, retriever, new, owner)


def corpus_search(text: str | None, image_key: str | None, k: int, reader: str) -> list[dict]:
    import dataclasses

    from cm3leon.inference.corpus import search

    runtime = get_runtime()
    memory, retriever = require_memory()
    image = runtime.objects.get_image(image_key) if image_key else None
    with runtime.exclusive():
        found = search(memory, retriever, text, image, k, reader)
    return [dataclasses.asdict(doc) for doc in found]


def corpus_delete(doc_ids: list[str], owner: str) -> int:
    from cm3leon.inference.corpus import delete_documents

    memory, _ = require_memory()
    with get_runtime().exclusive():
        return delete_documents(memory, doc_ids, owner)


def require_memory() -> tuple:
    runtime = get_runtime()
    if runtime.memory is None or runtime.retriever is None:
        raise RuntimeError(f"this worker has no retrieval memory (no retriever in {runtime.settings.retriever_dir})")
    return runtime.memory, runtime.retriever


def register(app: Celery) -> None:
    app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(run_job)
    for name, function in ((CORPUS_ADD, corpus_add), (CORPUS_SEARCH, corpus_search), (CORPUS_DELETE, corpus_delete)):
        app.task(name=name, ignore_result=False)(function)
