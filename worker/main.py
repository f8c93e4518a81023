"""Celery's `-A` target for worker processes: `celery -A worker.main worker ...` (settings from CM3LEON_*)."""

from worker.app import worker_app

app = worker_app()
