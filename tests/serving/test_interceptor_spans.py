"""The tracing interceptor's span of a streaming RPC: current while the handler runs, ended once however the
stream ends, and closing a stream from another task (a cancelled or abandoned call) logs no context error."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services import interceptors
from services.interceptors import TracingInterceptor

METHOD = "/cm3leon.v1.Jobs/WatchJob"


class CallDetails:
    method = METHOD


@pytest.fixture
def finished(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """The interceptor's spans go to an in-memory exporter of a provider of this test's own."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(interceptors, "tracer", lambda: provider.get_tracer("test"))
    return exporter


async def traced_stream(behaviour: Any) -> Any:
    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_stream_rpc_method_handler(behaviour)

    handler = await TracingInterceptor().intercept_service(continuation, CallDetails())
    return handler.unary_stream(None, None)


def test_a_stream_closed_from_another_task_ends_its_span_without_a_context_error(
    finished: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    handler_spans: list[trace.Span] = []
    handler_closed = asyncio.Event()

    async def watch(request: Any, context: Any) -> AsyncIterator[int]:
        try:
            for number in range(1_000):
                handler_spans.append(trace.get_current_span())
                yield number
        finally:
            handler_closed.set()

    async def scenario() -> None:
        stream = await traced_stream(watch)
        assert [await anext(stream), await anext(stream)] == [0, 1]
        # As asyncio's finalizer closes an abandoned generator: in a task of its own, with another context.
        await asyncio.create_task(stream.aclose(), context=contextvars.Context())
        assert handler_closed.is_set(), "the handler's generator is closed with the stream, not left to the GC"

    with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if "detach" in r.getMessage()]
    (span,) = finished.get_finished_spans()
    assert span.name == METHOD.lstrip("/") and span.attributes == {"rpc.method": METHOD.lstrip("/")}
    assert all(s.get_span_context() == span.get_span_context() for s in handler_spans) and len(handler_spans) == 2


def test_a_failing_stream_records_its_error_and_a_finished_one_ends_cleanly(finished: InMemorySpanExporter) -> None:
    async def fails(request: Any, context: Any) -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("the handler broke")

    async def ends(request: Any, context: Any) -> AsyncIterator[int]:
        yield 1
        yield 2

    async def scenario() -> None:
        broken = await traced_stream(fails)
        assert await anext(broken) == 1
        with pytest.raises(RuntimeError, match="the handler broke"):
            await anext(broken)
        assert [item async for item in await traced_stream(ends)] == [1, 2]

    asyncio.run(scenario())
    failed, clean = finished.get_finished_spans()
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]
    assert clean.status.status_code == trace.StatusCode.UNSET and not clean.events
