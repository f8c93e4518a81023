"""The worker's Celery application: the shared configuration (`services.queue`) with the worker's tasks registered,
run by Celery's threads pool: `worker_jobs` job threads in one process (`worker.runtime.job_threads`), sharing its
one loaded engine.

    celery -A worker.main worker -Q cm3.image,cm3.text,cm3.corpus

The pool and its size come from the settings (`CM3LEON_WORKER_JOBS`), not the command line, so every way of
starting a worker (compose, the embedded stack, by hand) gets the same; with prefetch multiplier 1 a worker holds
at most that many messages.
"""

from __future__ import annotations

from celery import Celery

from services.queue import make_celery
from services.settings import WorkerSettings
from worker import tasks
from worker.runtime import job_threads


def worker_app() -> Celery:
    """The app a worker process runs, from CM3LEON_* settings; registers the tasks."""
    settings = WorkerSettings()
    app = make_celery(settings)
    app.conf.update(
        worker_pool="threads",
        worker_concurrency=job_threads(settings),
        worker_consumer="worker.consumer:Consumer",
    )
    tasks.register(app)
    return app
