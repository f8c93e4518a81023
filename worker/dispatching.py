"""The worker's part in fair dispatch (`services.dispatch`): it dispatches when it takes a job (a place in the
window is free again, so the next job waits at the broker while this one runs) and when a job ends (its
tenant's running cap has room again)."""

from __future__ import annotations

import logging

from celery import current_app

from services.dispatch import dispatch
from services.queue import RUN_JOB
from services.reaper import celery_publisher
from worker.runtime import Runtime

log = logging.getLogger(__name__)


def dispatch_next(runtime: Runtime) -> None:
    """Dispatch and publish what the window and the caps allow; best-effort (the reaper's pass follows anyway)."""
    try:
        dispatch(runtime.store, runtime.settings, celery_publisher(current_app, RUN_JOB))
    except Exception as error:  # Redis away: the reaper's next pass dispatches
        log.warning("dispatching failed (%s)", type(error).__name__)
