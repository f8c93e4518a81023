"""Per-process worker state: settings, stores and the engine, loaded once per worker process and shared by its
job threads (Celery's threads pool, `worker.app`).

Celery's `worker_init` builds it and warms the model up before the worker takes a message; a heartbeat thread
publishes what this worker's model can run and how many jobs it runs at once (its entry in the {ns}:workers hash,
`services.presence`), which the gateway reads to answer UNIMPLEMENTED for kinds no live worker supports; one
thread renews the leases of every job the process runs and keeps their hard time limits (`keep_leases`); a
reaper thread (`services.reaper`) takes back jobs other workers lost. The job threads call the engine at once
(it is thread-safe: their decodes share the steps of the model's one scheduler); a local-mode retrieval memory
takes one call at a time (`OneCallAtATime`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from services.jobstore import JobStore
from services.objectstore import ObjectStore
from services.reaper import celery_publisher, start_reaper
from services.redis_clients import redis_client
from services.settings import WorkerSettings
from services.telemetry import Metrics, setup_telemetry
from worker.declared import cost_profile

if TYPE_CHECKING:
    from cm3leon.inference.engine import Engine, EngineConfig
    from cm3leon.retrieval.memory import Memory
    from cm3leon.retrieval.retriever import Retriever

log = logging.getLogger(__name__)
HEARTBEAT_S = 5.0
# How often the lease thread looks at the running jobs' hard time limits (it renews leases every third of a lease).
DEADLINE_CHECK_S = 0.5
# The exit status of a worker that left because a job hung past its hard time limit (EX_SOFTWARE).
EXIT_HUNG_JOB = 70


@dataclass
class RunningJob:
    """One job a thread of this process runs: its lease is renewed and its time limits kept while registered."""

    job_id: str
    started: float  # time.monotonic()
    soft_deadline: float
    hard_deadline: float

    def past_soft_limit(self) -> bool:
        return time.monotonic() > self.soft_deadline


@dataclass
class RunningJobs:
    """The jobs this process runs, shared by the job threads and the lease thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[str, RunningJob] = field(default_factory=dict)

    def add(self, job_id: str, settings: WorkerSettings) -> RunningJob:
        now = time.monotonic()
        job = RunningJob(job_id, now, now + settings.soft_time_limit_s, now + settings.hard_time_limit_s)
        with self.lock:
            self.jobs[job_id] = job
        return job

    def get(self, job_id: str) -> RunningJob | None:
        with self.lock:
            return self.jobs.get(job_id)

    def remove(self, job_id: str) -> None:
        with self.lock:
            self.jobs.pop(job_id, None)

    def snapshot(self) -> list[RunningJob]:
        with self.lock:
            return list(self.jobs.values())


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
    jobs: int = 1  # job threads of this process (`job_threads`)
    running: RunningJobs = field(default_factory=RunningJobs)


_runtime: Runtime | None = None
_lock = threading.Lock()


class OneCallAtATime:
    """A client shared by job threads whose calls must not overlap: Qdrant's local mode (an in-process store
    with no locking) behind every job's retrieval and the corpus tasks; a server client needs none of this."""

    def __init__(self, target: object) -> None:
        self._target = target
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return locked


def open_memory(settings: WorkerSettings) -> tuple[Memory | None, Retriever | None]:
    if not (Path(settings.retriever_dir) / "retriever_config.json").exists():
        log.warning("no retriever in %s: retrieval is off", settings.retriever_dir)
        return None, None
    from cm3leon.retrieval.config import MemoryConfig
    from cm3leon.retrieval.memory import Memory, connect
    from cm3leon.retrieval.retriever import Retriever

    retriever = Retriever.from_pretrained(settings.retriever_dir)
    config = MemoryConfig.preset(
        "shapes",
        name=settings.memory_name,
        path=settings.memory_path,
        diversity_threshold=settings.memory_diversity_threshold,
    )
    client = connect(config)
    if client.init_options.get("url") is None:  # local mode: the job threads take turns
        client = OneCallAtATime(client)  # type: ignore[assignment]
    return Memory.for_retriever(config, retriever, client), retriever


# Job threads per worker when `worker_jobs` is 0, by device: the more jobs share a decode step the cheaper each
# is (on CPU a step's products cost the same for 2 rows as for 16, the row-invariant padding); figures in
# docs/deploy.md, sizing.
DEFAULT_JOBS = {"cuda": 8, "cpu": 16}


def resolved_device(settings: WorkerSettings) -> str:
    """The device the engine will load on: `auto` is cuda when torch sees one."""
    if settings.device != "auto":
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def job_threads(settings: WorkerSettings) -> int:
    """How many jobs this worker runs at once: the setting, or the device's default."""
    return settings.worker_jobs or DEFAULT_JOBS[resolved_device(settings)]


def engine_config(settings: WorkerSettings) -> EngineConfig:
    """The engine's configuration, with the scheduler every job thread's decode shares."""
    from cm3leon.decoding.scheduler import SchedulerConfig
    from cm3leon.inference.engine import EngineConfig

    decoder = SchedulerConfig(
        max_rows=settings.decoder_max_rows,
        max_tokens=settings.decoder_max_tokens or None,
        prefill_chunk_tokens=settings.decoder_prefill_chunk_tokens,
    )
    return EngineConfig(device=settings.device, previews_per_image=settings.previews_per_image, decoder=decoder)


def build_runtime(settings: WorkerSettings) -> Runtime:
    import torch

    from cm3leon.inference.engine import Engine
    from services.queue import RUN_JOB, make_celery

    if settings.threads:
        torch.set_num_threads(settings.threads)
    setup_telemetry(settings.otel_exporter, f"{settings.service_name}-worker")
    objects = ObjectStore.from_settings(settings)
    objects.ensure_bucket()
    memory, retriever = open_memory(settings)
    jobs = job_threads(settings)
    engine = Engine.load(settings.model_dir, engine_config(settings), memory=memory, retriever=retriever)
    engine.warm_up()
    store = JobStore(redis_client(settings), settings.namespace, settings.job_ttl_s)
    name = f"{socket.gethostname()}-{os.getpid()}"
    runtime = Runtime(settings, store, objects, engine, memory, retriever, Metrics(), name, jobs=jobs)
    threading.Thread(target=heartbeat, args=(runtime,), daemon=True, name="cm3leon-heartbeat").start()
    threading.Thread(target=keep_leases, args=(runtime,), daemon=True, name="cm3leon-lease").start()
    start_reaper(store, settings, celery_publisher(make_celery(settings), RUN_JOB))
    log.info(
        "worker %s ready: model %s runs %s, %d jobs at once", name, engine.bundle.model_id, engine.supported_kinds, jobs
    )
    return runtime


def heartbeat(runtime: Runtime) -> None:
    engine = runtime.engine
    info = {
        "model_id": engine.bundle.model_id,
        "kinds": list(engine.supported_kinds),
        "pid": os.getpid(),
        "jobs": runtime.jobs,
    }
    info.update(declared(runtime))
    while True:
        try:
            runtime.store.publish_worker(runtime.name, info)
        except redis.RedisError:
            log.exception("heartbeat failed")
        threading.Event().wait(HEARTBEAT_S)


def declared(runtime: Runtime) -> dict[str, object]:
    """Fair use: the job slots of this process (the dispatch window counts them) and its model's cost profile."""
    return {"slots": runtime.jobs, "cost": cost_profile(runtime.engine.bundle, tuple(runtime.engine.supported_kinds))}


def keep_leases(runtime: Runtime) -> None:
    """Every third of the lease, push the leases of the running jobs forward (also through a long native call);
    in between, keep their hard time limits (`check_hard_limits`)."""
    interval = runtime.settings.lease_ttl_s / 3
    renewed = 0.0
    while True:
        if time.monotonic() - renewed >= interval:
            renewed = time.monotonic()
            job_ids = [job.job_id for job in runtime.running.snapshot()]
            try:
                runtime.store.renew_leases(job_ids, runtime.settings.lease_ttl_s)
            except redis.RedisError as error:
                log.warning("renewing the leases of %d jobs failed (%s)", len(job_ids), type(error).__name__)
        check_hard_limits(runtime)
        threading.Event().wait(min(DEADLINE_CHECK_S, interval))


def check_hard_limits(runtime: Runtime, exit: Callable[[int], None] = os._exit) -> None:
    """A job still running past its hard time limit is stuck where no cancel check reaches (a call that never
    returns): it is failed DEADLINE_EXCEEDED and the process exits, since a thread cannot be stopped; the
    process's other jobs keep their unacknowledged messages and leases, so they run again elsewhere (acks_late,
    the reaper), and the job itself, already final, is skipped there."""
    now = time.monotonic()
    overdue = [job for job in runtime.running.snapshot() if now > job.hard_deadline]
    if not overdue:
        return
    from services.records import JobRecord, JobState

    limit = runtime.settings.hard_time_limit_s
    for job in overdue:
        log.critical("job %s ran past the hard time limit of %s s: failing it and exiting", job.job_id, limit)

        def fail(record: JobRecord) -> bool:
            if record.state.finished:
                return False
            record.finish(JobState.FAILED, "DEADLINE_EXCEEDED", f"the job ran past the hard time limit of {limit} s")
            return True

        try:
            runtime.store.update(job.job_id, fail)
        except redis.RedisError:  # its lease expires with the process: the reaper takes it back
            log.warning("could not record the hard time limit of job %s", job.job_id, exc_info=True)
    logging.shutdown()
    exit(EXIT_HUNG_JOB)


def get_runtime() -> Runtime:
    """The process's runtime, built on first use (`worker_init` builds it before the worker takes a message)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_runtime(WorkerSettings())
        return _runtime
