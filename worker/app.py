"""The worker's Celery application: the shared configuration (`services.queue`) with the worker's tasks registered.

    celery -A worker.main worker -Q cm3.image,cm3.text,cm3.corpus --concurrency 1 --pool prefork
"""

from __future__ import annotations

from celery import Celery

from services.queue import make_celery
from services.settings import WorkerSettings
from worker import tasks


def worker_app() -> Celery:
    """The app a worker process runs, from CM3LEON_* settings; registers the tasks."""
    app = make_celery(WorkerSettings())
    tasks.register(app)
    return app
