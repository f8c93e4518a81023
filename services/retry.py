"""Retries with exponential backoff and a deadline, for calls to a dependency that may blip (S3, Qdrant, Redis).

A deadline rather than a count: what a caller can afford is time, whatever each try costs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 2.0


class DeadlineExceeded(Exception):
    """The call kept failing until the deadline; `__cause__` is the last error."""

    def __init__(self, what: str, deadline_s: float, service: str) -> None:
        super().__init__(f"{what} kept failing for {deadline_s:g} s")
        self.what, self.deadline_s, self.service = what, deadline_s, service


def retry_call(
    call: Callable[[], T],
    *,
    what: str,
    deadline_s: float,
    retry_on: tuple[type[BaseException], ...],
    between: Callable[[], None] | None = None,
    service: str = "a backing service",
    transient: Callable[[BaseException], bool] = lambda _: True,
) -> T:
    """`call()`, tried again on `retry_on` errors that are `transient` with backoff until `deadline_s` has passed
    (then DeadlineExceeded from the last error). `between` runs before each new try (a cancel check may raise)."""
    deadline = time.monotonic() + deadline_s
    delay = FIRST_DELAY_S
    while True:
        try:
            return call()
        except retry_on as error:
            if not transient(error):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(what, deadline_s, service) from error
            log.warning("%s failed (%s); retrying in %.1f s", what, type(error).__name__, min(delay, remaining))
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_DELAY_S)
            if between is not None:
                between()
