"""Whose documents a search may return: the reader of the current context (a tenant, or None for everyone).

Apart from `memory.py` so that code which only says who reads (a serving worker, per job) does not load Qdrant.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

BASE_OWNER = ""  # the owner of the shared base memory's documents (readable by every tenant)
# None: every document (offline tools: building, training, evaluation); a serving worker sets the job's tenant.
READER: contextvars.ContextVar[str | None] = contextvars.ContextVar("memory_reader", default=None)


def read_as(reader: str | None) -> None:
    """Searches of this context from now on see `reader`'s documents and the base ones (None: everything)."""
    READER.set(reader)


@contextlib.contextmanager
def reading_as(reader: str | None) -> Iterator[None]:
    """Searches inside the block see `reader`'s documents and the base ones."""
    token = READER.set(reader)
    try:
        yield
    finally:
        READER.reset(token)
