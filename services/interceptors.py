"""Gateway interceptors: auth (API key metadata -> tenant), error mapping (domain errors -> status codes) and
tracing (one span per RPC). Each wraps the handler's behaviour, so it works for unary and streaming methods.

Health checking and reflection are open (no key needed): load balancers and grpcurl use them.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import redis
from grpc import aio

from cm3leon_client.channel import API_KEY_HEADER
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


class AuthInterceptor(aio.ServerInterceptor):
    def __init__(self, api_keys: dict[str, str]) -> None:
        self.api_keys = api_keys

    async def intercept_service(self, continuation: Callable[..., Awaitable], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if is_open(details.method):
            return handler
        metadata = dict(details.invocation_metadata or ())
        tenant = self.api_keys.get(str(metadata.get(API_KEY_HEADER, "")))

        def around(behaviour: Behaviour, streaming: bool) -> Behaviour:
            async def reject(request: Any, context: aio.ServicerContext) -> None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"send a valid API key in '{API_KEY_HEADER}'")

            if tenant is None:
                if streaming:

                    async def reject_stream(request: Any, context: aio.ServicerContext) -> Any:
                        await reject(request, context)
                        yield  # pragma: no cover (abort raised)

                    return reject_stream
                return reject
            if streaming:

                async def stream(request: Any, context: aio.ServicerContext) -> Any:
                    TENANT.set(tenant)
                    async for item in behaviour(request, context):
                        yield item

                return stream

            async def unary(request: Any, context: aio.ServicerContext) -> Any:
                TENANT.set(tenant)
                return await behaviour(request, context)

            return unary

        return wrap(handler, around)


def status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, ServiceError):
        return grpc.StatusCode[error.code], str(error)
    if isinstance(error, redis.RedisError):
        return grpc.StatusCode.UNAVAILABLE, f"the job store is unavailable ({type(error).__name__})"
    return grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__})"


class ErrorInterceptor(aio.ServerInterceptor):
    """Domain errors -> their status code; store outages -> UNAVAILABLE; anything else -> INTERNAL (logged)."""

    async def intercept_service(self, continuation: Callable[..., Awaitable], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if is_open(details.method):
            return handler

        async def fail(error: Exception, context: aio.ServicerContext) -> None:
            code, message = status_of(error)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s failed", details.method, exc_info=error)
            await context.abort(code, message)

        def around(behaviour: Behaviour, streaming: bool) -> Behaviour:
            if streaming:

                async def stream(request: Any, context: aio.ServicerContext) -> Any:
                    try:
                        async for item in behaviour(request, context):
                            yield item
                    except (ServiceError, redis.RedisError) as error:
                        await fail(error, context)

                return stream

            async def unary(request: Any, context: aio.ServicerContext) -> Any:
                try:
                    return await behaviour(request, context)
                except (ServiceError, redis.RedisError) as error:
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
                    with tracer().start_as_current_span(name, attributes={"rpc.method": name}):
                        async for item in behaviour(request, context):
                            yield item

                return stream

            async def unary(request: Any, context: aio.ServicerContext) -> Any:
                with tracer().start_as_current_span(name, attributes={"rpc.method": name}):
                    return await behaviour(request, context)

            return unary

        return wrap(handler, around)
