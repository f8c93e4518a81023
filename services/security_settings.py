"""The gateway's security settings (keys, TLS, tenancy, fair use, bounds), from `CM3LEON_*` like the rest.

A mixin of `GatewaySettings`, kept apart so that everything about who may do what is read in one place.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CM3LEON_"


class SecuritySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # API keys as JSON, `{"sha256:<hex of the key>": {"tenant": "a", "scopes": ["submit", "read"]}}` (the form to
    # use), or the development form `{"<key>": "<tenant>"}` (submit, read, corpus-write). Held as hashes only.
    api_keys: dict[str, Any] | None = None
    # The same mapping in a file, re-read when it changes (rotation and revocation without a restart).
    api_keys_file: str = ""
    api_keys_reload_s: float = Field(5.0, ge=0)  # how often the file's mtime is looked at (0: every call)
    # Development only: accept the built-in key `dev-key` (tenant "dev", every scope).
    dev_keys: bool = False
    # Retrieval memories every tenant may name in `sampling.memory` (their own documents and the shared base).
    shared_memories: list[str] = Field(default_factory=lambda: ["shapes"])
    # Fair use per tenant, in cost units (a job's decoded tokens, `services.cost`: images x candidates x guidance
    # streams x tokens per output; a plain text->image job of the shipped model costs 64 codes x 2 streams = 128):
    # a token bucket refilled at `rate` per second up to `burst`, and a cap on the cost of its queued jobs (so one
    # tenant cannot fill the global queue).
    tenant_rate_per_s: float = Field(1024.0, gt=0)
    tenant_burst: int = Field(16384, ge=1)
    tenant_max_queued_cost: int = Field(8192, ge=1)
    # Tokens per output the cost assumes until a worker has declared its model's (image codes, text budget).
    cost_image_tokens: int = Field(64, ge=1)
    cost_text_tokens: int = Field(64, ge=1)
    tenant_queued_retry_s: float = Field(5.0, gt=0)  # the retry-after hint when the queued cap is what refused
    # Long-lived RPCs: open WatchJob streams per tenant (per gateway), RPCs in flight per gateway, and how long
    # a connection lives before the server asks the client to reconnect (clients resume where they were).
    max_watch_streams_per_tenant: int = Field(64, ge=1)
    max_concurrent_rpcs: int = Field(2000, ge=1)
    max_connection_age_s: float = Field(1800.0, gt=0)
    # Every open WatchJob stream of a gateway is read by `watch_readers` tasks of one Redis connection each
    # (services.watch_hub), blocking at most `watch_block_ms` per read: a new stream is read from within that.
    watch_readers: int = Field(2, ge=1, le=64)
    watch_block_ms: int = Field(250, ge=1)
    max_corpus_calls_per_tenant: int = Field(4, ge=1)  # CorpusService calls in flight per tenant (per gateway)
    # TLS: the server's certificate chain and key (PEM); with a client CA, clients must show a certificate.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # With TLS: also listen in plaintext on 127.0.0.1 at this port (0: not), for the container's own health probe
    # (a probe cannot present a client certificate or know the certificate's name); loopback only.
    probe_port: int = Field(0, ge=0, le=65535)

    @field_validator("api_keys")
    @classmethod
    def _keys_present(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        if not value or any(not key or not grant for key, grant in value.items()):
            raise ValueError("api_keys needs at least one non-empty key -> tenant (or grant) pair")
        return value
