"""The fuzzed API: 1,000 generated requests (fixed seed) over every RPC of both services against a real gateway
(and its worker): every answer OK or a documented client error, never UNKNOWN or INTERNAL; the gateway stays up."""

from __future__ import annotations

import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.fuzz import EXPECTED_CODES, FUZZ_LIMITS, METHODS, fuzz
from services.stack import Stack

pytestmark = pytest.mark.slow
REQUESTS = int(os.environ.get("CM3LEON_FUZZ_REQUESTS", "1000"))


def test_every_fuzzed_request_gets_a_documented_answer(secure_stack: Stack) -> None:
    child, port = secure_stack.start_gateway("gateway-fuzz", env=FUZZ_LIMITS)
    target = f"127.0.0.1:{port}"
    report = fuzz(target, "key-fuzz", REQUESTS)
    print(f"fuzz: {report.requests} requests, {dict(report.by_code)}")
    assert report.requests >= REQUESTS
    assert report.unexpected_count == 0, report.unexpected
    assert set(report.by_code) <= EXPECTED_CODES and report.by_code["INVALID_ARGUMENT"] > 0
    assert child.process.poll() is None, "the gateway is still running"
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_strategies_cover_every_rpc_of_both_services() -> None:
    assert {f"{m.containing_service.name}.{m.name}" for m in METHODS} == {
        "JobService.SubmitJob",
        "JobService.GetJob",
        "JobService.WatchJob",
        "JobService.CancelJob",
        "JobService.ListJobs",
        "CorpusService.AddDocuments",
        "CorpusService.SearchDocuments",
        "CorpusService.DeleteDocuments",
    }
