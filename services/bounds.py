"""Bounds on what one request can make the gateway and Redis hold: unknown protobuf fields dropped, the stored
request's size capped, ids checked before they become Redis keys, list and delete sizes capped."""

from __future__ import annotations

import re
from collections.abc import Sequence

from google.protobuf.message import Message

from services.errors import InvalidArgument, NotFound

# An accepted request as stored (inline images are object keys by then): prompts, boxes and options only.
MAX_STORED_REQUEST_BYTES = 64 * 1024
JOB_ID = re.compile(r"[0-9a-f]{32}")  # services.records.new_job_id
DOC_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_DELETE_IDS = 256
MAX_LIST_STATES = 8
MAX_PAGE_TOKEN_CHARS = 256


def without_unknown_fields(message: Message) -> Message:
    """`message` with every unknown field (fields of no known number, at any depth) dropped, in place."""
    message.DiscardUnknownFields()
    return message


def check_stored_size(path: str, message: Message) -> None:
    size = message.ByteSize()
    if size > MAX_STORED_REQUEST_BYTES:
        raise InvalidArgument(
            path, f"is {size} bytes once its images are stored; the limit is {MAX_STORED_REQUEST_BYTES}"
        )


def check_job_id(job_id: str) -> None:
    """A malformed id names no job (NOT_FOUND, as an unknown one), and never becomes part of a Redis key."""
    if not JOB_ID.fullmatch(job_id):
        raise NotFound(f"job_id: no job {job_id[:40]!r} (job ids are 32 lowercase hex digits)")


def check_doc_ids(doc_ids: Sequence[str]) -> None:
    if not 1 <= len(doc_ids) <= MAX_DELETE_IDS:
        raise InvalidArgument("doc_ids", f"give 1 to {MAX_DELETE_IDS} document ids, got {len(doc_ids)}")
    for index, doc_id in enumerate(doc_ids):
        if not DOC_ID.fullmatch(doc_id):
            raise InvalidArgument(f"doc_ids[{index}]", "use 1-128 letters, digits, '-', '_' or '.'")


def check_list_request(states: Sequence[int], page_token: str) -> None:
    if len(states) > MAX_LIST_STATES:
        raise InvalidArgument("states", f"give at most {MAX_LIST_STATES} states, got {len(states)}")
    if len(page_token) > MAX_PAGE_TOKEN_CHARS:
        raise InvalidArgument("page_token", "not a token from an earlier ListJobs response")
