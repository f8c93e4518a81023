"""Celery's consumer with kombu's failures on a lost broker connection made recoverable.

When the Redis broker connection drops while messages are unacknowledged (a threads pool holds several, each
acknowledged when its job ends), kombu raises AttributeError, which Celery does not expect, in two places: closing
the lost connection (its channel tries to push the messages back through a transport already released) and
acknowledging, after the reconnect, a message of the lost connection. Either stops the worker ("Unrecoverable
error") instead of letting it reconnect and finish its jobs. Here both are tolerated and logged: such a message
stays in the broker's unacknowledged set until the visibility timeout restores it, and then its job, final by
then, is skipped; a job whose run was lost is covered by its lease and the reaper (`services.reaper`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

log = logging.getLogger(__name__)


def tolerating_lost_transport(call: Callable[..., Any], what: str) -> Callable[..., Any]:
    """`call`, with kombu's AttributeError on a released transport logged instead of raised."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except AttributeError as error:
            log.warning("%s failed on a lost broker connection (%r); the worker goes on", what, error)
            return None

    return guarded


class Consumer(CeleryConsumer):
    """`worker_consumer` of the worker's app (`worker.app`)."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        if connection is not None:  # what Celery's handler calls next
            connection.close = tolerating_lost_transport(connection.close, "closing the connection")
        super().on_connection_error_after_connected(exc)

    def call_soon_ack(self, p: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return super().call_soon_ack(tolerating_lost_transport(p, "acknowledging a message"), *args, **kwargs)
