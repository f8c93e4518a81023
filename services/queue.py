"""The Celery application's configuration and task names, shared by the gateway (which sends tasks by name) and the
worker (which runs them); torch-free, so the gateway imports it without the model stack.

    celery -A worker.main worker -Q cm3.image,cm3.text,cm3.corpus

Reliability (BRIEF section 3): acks_late + reject_on_worker_lost (a job whose worker dies is redelivered, not
lost), prefetch multiplier 1 (a worker holds no more jobs than it runs: `worker_jobs` threads, `worker.app`), and
the worker's own soft < hard time limit < the broker's visibility timeout (a slow job is failed before the broker
would hand its message to another worker; `worker.deadlines`).
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from services.keys import queue_names
from services.settings import StackSettings, WorkerSettings

RUN_JOB = "cm3leon.run_job"
CORPUS_ADD = "cm3leon.corpus_add"
CORPUS_SEARCH = "cm3leon.corpus_search"
CORPUS_DELETE = "cm3leon.corpus_delete"
# How often each worker looks for messages a lost worker left unacknowledged (see broker_transport_options).
UNACKED_RESTORE_INTERVAL_S = 5
# Broker sockets: a hung Redis fails a publish or a poll after this long instead of hanging the caller.
BROKER_SOCKET_TIMEOUT_S = 5.0
BROKER_HEALTH_CHECK_S = 10
# A publish retries a lost connection this often before it fails (the gateway then answers UNAVAILABLE).
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def make_celery(settings: StackSettings) -> Celery:
    limits = settings if isinstance(settings, WorkerSettings) else WorkerSettings(**settings.model_dump())
    queues = queue_names(settings.namespace)
    # No result backend: no task stores a result (corpus calls reply over Redis themselves: services/corpus_calls.py).
    app = Celery("cm3leon", broker=settings.redis_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": limits.visibility_timeout_s,
            # Every broker key under the namespace: two stacks can share one Redis.
            "global_keyprefix": f"{settings.namespace}:broker:",
            # A worker lost whole (container killed) leaves its message unacked; surviving workers sweep for
            # such messages older than the visibility timeout every this many seconds (kombu's default,
            # 10 s x throttle 10, waits up to 100 s more; tests/deploy kills a worker and relies on this).
            "unacked_restore_interval": UNACKED_RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
            "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": BROKER_SOCKET_TIMEOUT_S,
            "health_check_interval": BROKER_HEALTH_CHECK_S,
        },
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        task_ignore_result=True,
        task_queues=[Queue(name) for name in queues.values()],
        task_default_queue=queues["image"],
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        task_routes={
            CORPUS_ADD: {"queue": queues["corpus"]},
            CORPUS_SEARCH: {"queue": queues["corpus"]},
            CORPUS_DELETE: {"queue": queues["corpus"]},
        },
    )
    return app
