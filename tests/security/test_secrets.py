"""No configured secret (API keys, their hashes, the S3 secret) appears in any process's log or exported spans,
after calls with valid, refused and unknown keys."""

from __future__ import annotations

import grpc
import pytest

import cm3leon_client as api
from cm3leon_client import Client
from services.auth import key_digest
from services.stack import S3_SECRET_KEY, Stack
from tests.security.conftest import KEYS

pytestmark = pytest.mark.slow
UNKNOWN_KEY = "unknown-key-3f9a1c"


def test_no_secret_in_logs_or_spans(secure_stack: Stack, secure_target: str, client_a: Client) -> None:
    job = client_a.submit(api.text_to_image("a blue square", seed=5))
    client_a.wait(job.job_id, timeout_s=120)
    for key in (UNKNOWN_KEY, "key-read-only"):
        with Client(secure_target, key) as other, pytest.raises(grpc.RpcError):
            other.submit(api.text_to_image("refused", seed=6))
    texts = [child.log_path.read_text(errors="replace") for child in secure_stack.children]
    texts.append(secure_stack.spans_path.read_text())  # type: ignore[attr-defined]
    assert any(job.job_id in text for text in texts), "the logs and spans were captured"
    secrets = [*KEYS, UNKNOWN_KEY, *(key_digest(key) for key in KEYS), S3_SECRET_KEY]
    for secret in secrets:
        assert not any(secret in text for text in texts), f"{secret[:6]}... is in a log or span"
