"""Gateway interceptors: auth (API key metadata -> tenant), error mapping (domain errors -> status codes) and
tracing (one span per RPC). Each wraps the handler's behaviour, so it works for unary and streaming methods.

Health checking and reflection are open (no key needed): load balancers and grpcurl use them.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import grpc
import redis
import urllib3
from grpc import aio
from kombu.exceptions import KombuError
from minio.error import MinioException
from opentelemetry import trace

from services.errors import ServiceError
from services.telemetry import tracer

log = logging.getLogger(__name__)
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant")
Behaviour = Callable[..., Any]


def current_tenant() -> str:
    return TENANT.get()


def wrap(handler: grpc.RpcMethodHandler | None, around: Callable[[Behaviour, bool], Behaviour]) -> Any:
    """The handler with its unary-unary or unary-stream behaviour wrapped by `around(behaviour, streaming)`."""
    if handler is None:
        return None
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            around(handler.unary_unary, False), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            around(handler.unary_stream, True), handler.request_deserializer, handler.response_serializer
        )
    return handler


def is_open(method: str) -> bool:
    return method.startswith(OPEN_PREFIXES)


# A dependency's errors -> what the client is told (UNAVAILABLE: retry later); the details go to the log and trace.
OUTAGES: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    ((redis.RedisError,), "the job store is unavailable; retry later"),
    ((KombuError,), "the job queue is unavailable; retry later"),
    ((MinioException, urllib3.exceptions.HTTPError), "the object store is unavailable; retry later"),
    ((ConnectionError, TimeoutError), "a backing service is unavailable; retry later"),
)
INTERNAL_MESSAGE = "internal error; the details are in the gateway's log and the call's trace"


def status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code (from the documented list) and a message with no internals."""
    if isinstance(error, ServiceError):
        return grpc.StatusCode[error.code], str(error)
    for kinds, message in OUTAGES:
        if isinstance(error, kinds):
            return grpc.StatusCode.UNAVAILABLE, message
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


class ErrorInterceptor(aio.ServerInterceptor):
    """Domain errors -> their status code; dependency outages -> UNAVAILABLE; anything else -> INTERNAL. Every
    error but a domain one is logged and recorded on the call's span."""

    async def intercept_service(self, continuation: Callable[..., Awaitable], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if is_open(details.method):
            return handler

        async def fail(error: Exception, context: aio.ServicerContext) -> None:
            code, message = status_of(error)
            if not isinstance(error, ServiceError):
                log.error("%s failed: %s", details.method, code.name, exc_info=error)
                trace.get_current_span().record_exception(error)
            await context.abort(code, message)

        def around(behaviour: Behaviour, streaming: bool) -> Behaviour:
            if streaming:

                async def stream(request: Any, context: aio.ServicerContext) -> Any:
                    try:
                        async for item in behaviour(request, context):
                            yield item
                    except aio.AbortError:
                        raise
                    except Exception as error:
                        await fail(error, context)

                return stream

            async def unary(request: Any, context: aio.ServicerContext) -> Any:
                try:
                    return await behaviour(request, context)
                except aio.AbortError:
                    raise
                except Exception as error:
                    await fail(error, context)

            return unary

        return wrap(handler, around)


class TracingInterceptor(aio.ServerInterceptor):
    """A server span per RPC (the root of a job's trace for SubmitJob), with the status code."""

    async def intercept_service(self, continuation: Callable[..., Awaitable], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if is_open(details.method):
            return handler
        name = details.method.lstrip("/")

        def around(behaviour: Behaviour, streaming: bool) -> Behaviour:
            if streaming:

                async def stream(request: Any, context: aio.ServicerContext) -> Any:
                    # The span is current while the handler makes each item, never across a `yield`: a stream
                    # the client cancels or abandons is closed from another task, which cannot reset this one's
                    # context (OpenTelemetry logs "Failed to detach context" there).
                    span = tracer().start_span(name, attributes={"rpc.method": name})
                    items = aiter(behaviour(request, context))
                    try:
                        while True:
                            with trace.use_span(span):
                                try:
                                    item = await anext(items)
                                except StopAsyncIteration:
                                    return
                            yield item
                    finally:
                        if isinstance(items, AsyncGenerator):
                            await items.aclose()  # now, not whenever the garbage collector finds it
                        span.end()

                return stream

            async def unary(request: Any, context: aio.ServicerContext) -> Any:
                with tracer().start_as_current_span(name, attributes={"rpc.method": name}):
                    return await behaviour(request, context)

            return unary

        return wrap(handler, around)
