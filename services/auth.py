"""API keys: who is calling (tenant) and what they may do (scopes), checked by the auth interceptor per RPC.

Keys are held only as sha256 digests and compared in constant time; a keys file is re-read when it changes,
so a key is rotated or revoked without a restart. Scopes: `submit` (submit, cancel), `read` (get, watch, list,
search), `corpus-write` (add and delete the tenant's documents) and `admin` (write the shared base memory).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from pydantic import BaseModel, ValidationError

from cm3leon_client.channel import API_KEY_HEADER
from services.interceptors import TENANT, Behaviour, is_open, wrap
from services.security_settings import SecuritySettings

log = logging.getLogger(__name__)
SUBMIT, READ, CORPUS_WRITE, ADMIN = "submit", "read", "corpus-write", "admin"
SCOPES = frozenset({SUBMIT, READ, CORPUS_WRITE, ADMIN})
# The scopes of a key given in the development form `{"<key>": "<tenant>"}`.
DEFAULT_SCOPES = frozenset({SUBMIT, READ, CORPUS_WRITE})
HASH_PREFIX = "sha256:"
DEV_KEY, DEV_TENANT = "dev-key", "dev"
# The scope each RPC needs; a method not listed needs `admin` (new RPCs are closed until given a scope).
METHOD_SCOPES = {
    "/cm3leon.v1.JobService/SubmitJob": SUBMIT,
    "/cm3leon.v1.JobService/CancelJob": SUBMIT,
    "/cm3leon.v1.JobService/GetJob": READ,
    "/cm3leon.v1.JobService/WatchJob": READ,
    "/cm3leon.v1.JobService/ListJobs": READ,
    "/cm3leon.v1.CorpusService/SearchDocuments": READ,
    "/cm3leon.v1.CorpusService/AddDocuments": CORPUS_WRITE,
    "/cm3leon.v1.CorpusService/DeleteDocuments": CORPUS_WRITE,
}


class Grant(BaseModel):
    """What one key may do: its tenant, scopes and the memories it may name beyond the shared ones."""

    tenant: str
    scopes: frozenset[str] = DEFAULT_SCOPES
    memories: tuple[str, ...] = ()

    def model_post_init(self, _: Any) -> None:
        if not self.tenant:
            raise ValueError("a key's tenant must not be empty")
        unknown = set(self.scopes) - SCOPES
        if unknown:
            raise ValueError(f"unknown scopes {sorted(unknown)}; use {sorted(SCOPES)}")


@dataclass(frozen=True)
class Principal:
    """The caller of the current RPC."""

    tenant: str
    scopes: frozenset[str]
    memories: tuple[str, ...] = ()

    def may(self, scope: str) -> bool:
        return scope in self.scopes


PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")


def current_principal() -> Principal:
    return PRINCIPAL.get()


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def hashed_entry(key: str, tenant: str, scopes: Iterable[str] = DEFAULT_SCOPES) -> dict[str, Any]:
    """The stored form of a key: `{"sha256:<hex>": {"tenant", "scopes"}}` (what an operator writes)."""
    return {HASH_PREFIX + key_digest(key): {"tenant": tenant, "scopes": sorted(scopes)}}


def parse_keys(entries: Mapping[str, Any], source: str) -> dict[str, Grant]:
    """digest -> grant from the JSON mapping of `source` (settings or a file); ValueError names the entry."""
    table: dict[str, Grant] = {}
    for name, value in entries.items():
        digest = name[len(HASH_PREFIX) :].lower() if name.startswith(HASH_PREFIX) else key_digest(name)
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"{source}: {name[:12]}...: not sha256:<64 hex digits>")
        try:
            grant = Grant(tenant=value) if isinstance(value, str) else Grant.model_validate(value)
        except (ValidationError, ValueError, TypeError) as error:
            raise ValueError(f"{source}: the entry of {digest[:8]}... is invalid: {error}") from None
        table[digest] = grant
    return table


class KeyRing:
    """The accepted keys: from settings (fixed) and a keys file (re-read when its stat changes)."""

    def __init__(self, fixed: dict[str, Grant], path: Path | None, reload_s: float) -> None:
        self.fixed, self.path, self.reload_s = fixed, path, reload_s
        self.from_file: dict[str, Grant] = {}
        self.file_stamp: tuple[int, int, int] | None = None
        self.checked_at = float("-inf")
        self.lock = threading.Lock()
        self.refresh(force=True)
        if not self.fixed and not self.from_file:
            raise ValueError("no API keys: set CM3LEON_API_KEYS or CM3LEON_API_KEYS_FILE (CM3LEON_DEV_KEYS for dev)")

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> KeyRing:
        fixed = parse_keys(settings.api_keys or {}, "CM3LEON_API_KEYS")
        if settings.dev_keys:
            fixed[key_digest(DEV_KEY)] = Grant(tenant=DEV_TENANT, scopes=SCOPES)
        path = Path(settings.api_keys_file) if settings.api_keys_file else None
        return cls(fixed, path, settings.api_keys_reload_s)

    def refresh(self, force: bool = False) -> None:
        """Re-read the keys file when it changed; a broken file keeps the last good keys (and is logged)."""
        now = time.monotonic()
        if self.path is None or (not force and now - self.checked_at < self.reload_s):
            return
        with self.lock:
            self.checked_at = now
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                if stamp == self.file_stamp:
                    return
                self.from_file = parse_keys(json.loads(self.path.read_text()), str(self.path))
                self.file_stamp = stamp
                log.info("API keys loaded from %s: %d keys", self.path, len(self.from_file))
            except (OSError, ValueError) as error:
                if force:
                    raise ValueError(f"CM3LEON_API_KEYS_FILE: {error}") from None
                log.error("API keys file %s not reloaded (keeping the last good keys): %s", self.path, error)

    def lookup(self, key: str) -> Principal | None:
        """The key's principal, or None (the keys file's entry wins over the settings'). Looked up by the SHA-256
        of the presented key: a lookup's timing can tell at most about digests, which reveal nothing of a key, so
        no per-key comparison is needed and the cost does not grow with the number of keys."""
        if not key:
            return None
        self.refresh()
        presented = key_digest(key)
        found = self.from_file.get(presented) or self.fixed.get(presented)
        return Principal(found.tenant, frozenset(found.scopes), found.memories) if found else None


async def reject_stream(code: grpc.StatusCode, message: str, context: aio.ServicerContext) -> Any:
    await context.abort(code, message)
    yield  # pragma: no cover (abort raised)


class KeyAuthInterceptor(aio.ServerInterceptor):
    """API key -> principal (UNAUTHENTICATED without a valid key), then the method's scope (PERMISSION_DENIED
    naming the missing scope); the handler runs with the principal and its tenant in context."""

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys

    async def intercept_service(self, continuation: Callable[..., Awaitable], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if is_open(details.method):
            return handler
        metadata = dict(details.invocation_metadata or ())
        principal = self.keys.lookup(str(metadata.get(API_KEY_HEADER, "")))
        scope = METHOD_SCOPES.get(details.method, ADMIN)
        if principal is None:
            refusal = (grpc.StatusCode.UNAUTHENTICATED, f"send a valid API key in '{API_KEY_HEADER}'")
        elif not principal.may(scope):
            refusal = (grpc.StatusCode.PERMISSION_DENIED, f"this API key lacks the '{scope}' scope")
        else:
            refusal = None

        def around(behaviour: Behaviour, streaming: bool) -> Behaviour:
            if refusal is not None:
                if streaming:
                    return lambda request, context: reject_stream(*refusal, context)

                async def reject(request: Any, context: aio.ServicerContext) -> None:
                    await context.abort(*refusal)

                return reject
            assert principal is not None
            if streaming:

                async def stream(request: Any, context: aio.ServicerContext) -> Any:
                    PRINCIPAL.set(principal)
                    TENANT.set(principal.tenant)
                    async for item in behaviour(request, context):
                        yield item

                return stream

            async def unary(request: Any, context: aio.ServicerContext) -> Any:
                PRINCIPAL.set(principal)
                TENANT.set(principal.tenant)
                return await behaviour(request, context)

            return unary

        return wrap(handler, around)


def keys_file_env(path: str | os.PathLike[str]) -> dict[str, str]:
    """The environment that points a gateway at a keys file, re-read on every call (tests and tools)."""
    return {"CM3LEON_API_KEYS_FILE": str(path), "CM3LEON_API_KEYS_RELOAD_S": "0"}
