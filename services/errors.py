"""Domain errors of the serving side; the gateway's error interceptor maps each to one gRPC status code."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: `code` is the gRPC status code name the gateway answers with."""

    code = "INTERNAL"


class InvalidArgument(ServiceError):
    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(ServiceError):
    code = "NOT_FOUND"


class AlreadyExists(ServiceError):
    code = "ALREADY_EXISTS"


class QueueFull(ServiceError):
    code = "RESOURCE_EXHAUSTED"


class Unimplemented(ServiceError):
    code = "UNIMPLEMENTED"


class Unavailable(ServiceError):
    code = "UNAVAILABLE"
