"""How a client reaches the gateway: target, credentials (TLS, API key), retries and deadlines in one place.

Retries live in the channel's gRPC service config, so every call (sync or asyncio) gets the same policy: a call
answered UNAVAILABLE (a gateway restarting, a connection refused) is tried again with exponential backoff. Every
call is safe to retry: SubmitJob through its `request_id`, which the client always sets, the rest by nature.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc

API_KEY_HEADER = "x-api-key"
DEFAULT_TARGET = "127.0.0.1:50051"
MESSAGE_LIMIT = 16 * 1024 * 1024
SERVICES = ("cm3leon.v1.JobService", "cm3leon.v1.CorpusService")
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.2s",
    "maxBackoff": "5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config() -> str:
    """The gRPC service config (JSON): the retry policy for every method of the cm3leon services."""
    return json.dumps(
        {"methodConfig": [{"name": [{"service": name} for name in SERVICES], "retryPolicy": RETRY_POLICY}]}
    )


@dataclass(frozen=True)
class Connection:
    """Where the gateway is and how to prove who we are.

    `ca_file` (or `tls=True` for the system's roots) turns TLS on; `cert_file` + `key_file` add a client
    certificate (mutual TLS). On TLS channels the API key travels as call credentials, on plaintext ones as
    metadata (gRPC refuses call credentials on an insecure channel). `timeout_s` is every unary call's deadline.
    """

    target: str = DEFAULT_TARGET
    api_key: str = ""
    timeout_s: float = 30.0
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None  # the name the server's certificate carries, when not the target's host

    @property
    def secure(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    def options(self) -> list[tuple[str, str | int]]:
        options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", service_config()),
        ]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return options

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS channel credentials (client certificate when given), composed with the API key's call credentials."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mutual TLS needs both a client certificate and its key (cert_file and key_file)")
        channel = grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )
        if not self.api_key:
            return channel
        return grpc.composite_channel_credentials(channel, grpc.metadata_call_credentials(ApiKey(self.api_key)))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata: the API key on plaintext channels (TLS channels carry it as call credentials)."""
        return ((API_KEY_HEADER, self.api_key),) if self.api_key and not self.secure else ()

    def channel(self) -> grpc.Channel:
        if self.secure:
            return grpc.secure_channel(self.target, self.credentials(), options=self.options())
        return grpc.insecure_channel(self.target, options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        if self.secure:
            return grpc.aio.secure_channel(self.target, self.credentials(), options=self.options())
        return grpc.aio.insecure_channel(self.target, options=self.options())


class ApiKey(grpc.AuthMetadataPlugin):
    """Call credentials: the API key in the `x-api-key` metadata of every call."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback(((API_KEY_HEADER, self.api_key),), None)


def read(path: Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()
