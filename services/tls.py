"""The gateway's listening port: TLS when a certificate is configured (mutual TLS when a client CA is too),
plaintext otherwise (local development; compose binds such a port to 127.0.0.1 only)."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc import aio

from services.security_settings import SecuritySettings


def server_credentials(settings: SecuritySettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured PEM files (None: no certificate configured)."""
    if not settings.tls_cert_file and not settings.tls_key_file:
        if settings.tls_client_ca_file:
            raise ValueError("CM3LEON_TLS_CLIENT_CA_FILE needs CM3LEON_TLS_CERT_FILE and CM3LEON_TLS_KEY_FILE")
        return None
    if not settings.tls_cert_file or not settings.tls_key_file:
        raise ValueError("TLS needs both CM3LEON_TLS_CERT_FILE and CM3LEON_TLS_KEY_FILE")
    chain = Path(settings.tls_cert_file).read_bytes()
    key = Path(settings.tls_key_file).read_bytes()
    client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def add_port(server: aio.Server, address: str, settings: SecuritySettings) -> int:
    """Listen on `address` as the settings say (and on the loopback probe port, if any); the port bound."""
    credentials = server_credentials(settings)
    if credentials is None:
        return server.add_insecure_port(address)
    if settings.probe_port:
        server.add_insecure_port(f"127.0.0.1:{settings.probe_port}")
    return server.add_secure_port(address, credentials)


def tls_env(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> dict[str, str]:
    """The settings that make a gateway serve TLS with these files (tests and the embedded stack)."""
    env = {"CM3LEON_TLS_CERT_FILE": str(cert_file), "CM3LEON_TLS_KEY_FILE": str(key_file)}
    if client_ca_file is not None:
        env["CM3LEON_TLS_CLIENT_CA_FILE"] = str(client_ca_file)
    return env
