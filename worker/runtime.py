"""Per-process worker state: settings, stores and the engine, loaded once when a pool process starts.

Celery's `worker_process_init` (prefork children) builds it and warms the model up; a heartbeat thread
publishes what this worker's model can run (its entry in the {ns}:workers hash, `services.presence`), which the
gateway reads to answer UNIMPLEMENTED for kinds no live worker supports; another thread renews the lease of the
job it runs; a reaper thread (`services.reaper`) takes back jobs other workers lost.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from services.jobstore import JobStore
from services.objectstore import ObjectStore
from services.reaper import celery_publisher, start_reaper
from services.redis_clients import redis_client
from services.settings import WorkerSettings
from services.telemetry import Metrics, setup_telemetry
from worker.declared import cost_profile

if TYPE_CHECKING:
    from cm3leon.inference.engine import Engine
    from cm3leon.retrieval.memory import Memory
    from cm3leon.retrieval.retriever import Retriever

log = logging.getLogger(__name__)
HEARTBEAT_S = 5.0


@dataclass
class Runtime:
    settings: WorkerSettings
    store: JobStore
    objects: ObjectStore
    engine: Engine
    memory: Memory | None
    retriever: Retriever | None
    metrics: Metrics
    name: str
    current_job: str | None = None  # the job this process runs (its lease is renewed while set)


_runtime: Runtime | None = None
_lock = threading.Lock()


def open_memory(settings: WorkerSettings) -> tuple[Memory | None, Retriever | None]:
    if not (Path(settings.retriever_dir) / "retriever_config.json").exists():
        log.warning("no retriever in %s: retrieval is off", settings.retriever_dir)
        return None, None
    from cm3leon.retrieval.config import MemoryConfig
    from cm3leon.retrieval.memory import Memory
    from cm3leon.retrieval.retriever import Retriever

    retriever = Retriever.from_pretrained(settings.retriever_dir)
    config = MemoryConfig.preset(
        "shapes",
        name=settings.memory_name,
        path=settings.memory_path,
        diversity_threshold=settings.memory_diversity_threshold,
    )
    return Memory.for_retriever(config, retriever), retriever


def build_runtime(settings: WorkerSettings) -> Runtime:
    import torch

    from cm3leon.inference.engine import Engine, EngineConfig
    from services.queue import RUN_JOB, make_celery

    if settings.threads:
        torch.set_num_threads(settings.threads)
    setup_telemetry(settings.otel_exporter, f"{settings.service_name}-worker")
    objects = ObjectStore.from_settings(settings)
    objects.ensure_bucket()
    memory, retriever = open_memory(settings)
    config = EngineConfig(device=settings.device, previews_per_image=settings.previews_per_image)
    engine = Engine.load(settings.model_dir, config, memory=memory, retriever=retriever)
    engine.warm_up()
    store = JobStore(redis_client(settings), settings.namespace, settings.job_ttl_s)
    name = f"{socket.gethostname()}-{os.getpid()}"
    runtime = Runtime(settings, store, objects, engine, memory, retriever, Metrics(), name)
    threading.Thread(target=heartbeat, args=(runtime,), daemon=True, name="cm3leon-heartbeat").start()
    threading.Thread(target=renew_leases, args=(runtime,), daemon=True, name="cm3leon-lease").start()
    start_reaper(store, settings, celery_publisher(make_celery(settings), RUN_JOB))
    log.info("worker %s ready: model %s runs %s", name, engine.bundle.model_id, engine.supported_kinds)
    return runtime


def heartbeat(runtime: Runtime) -> None:
    engine = runtime.engine
    info = {"model_id": engine.bundle.model_id, "kinds": list(engine.supported_kinds), "pid": os.getpid()}
    info.update(declared(runtime))
    while True:
        try:
            runtime.store.publish_worker(runtime.name, info)
        except redis.RedisError:
            log.exception("heartbeat failed")
        threading.Event().wait(HEARTBEAT_S)


def declared(runtime: Runtime) -> dict[str, object]:
    """Fair use: the job slots of this process (the dispatch window counts them) and its model's cost profile."""
    return {"slots": 1, "cost": cost_profile(runtime.engine.bundle, tuple(runtime.engine.supported_kinds))}


def renew_leases(runtime: Runtime) -> None:
    """Every third of the lease, push the running job's lease forward (also through a long native call)."""
    interval = runtime.settings.lease_ttl_s / 3
    while True:
        job_id = runtime.current_job
        if job_id is not None:
            try:
                runtime.store.renew_lease(job_id, runtime.settings.lease_ttl_s)
            except redis.RedisError as error:
                log.warning("renewing the lease of job %s failed (%s)", job_id, type(error).__name__)
        threading.Event().wait(interval)


def get_runtime() -> Runtime:
    """The process's runtime, built on first use (prefork children build it in worker_process_init)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_runtime(WorkerSettings())
        return _runtime
