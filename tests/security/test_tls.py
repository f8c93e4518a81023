"""TLS on the gateway: plaintext clients fail against it, clients trusting the CA succeed; with mutual TLS a
client without a certificate fails. Extra gateways of the security stack, with a throwaway CA."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cm3leon_client import Client
from cm3leon_client.channel import Connection
from cm3leon_stack.certs import ThrowawayPki, make_throwaway_pki
from cm3leon_stack.launch import serve_tls
from services.settings import GatewaySettings
from services.stack import Stack, free_port
from services.tls import server_credentials, tls_env
from tests.security.helpers import code_of


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayPki:
    return make_throwaway_pki(tmp_path_factory.mktemp("pki"))


def client(target: str, **tls: Path) -> Client:
    return Client(connection=Connection(target=target, api_key="key-a", timeout_s=10.0, **tls))


def test_half_a_tls_configuration_is_refused(pki: ThrowawayPki) -> None:
    with pytest.raises(ValueError, match="both"):
        server_credentials(GatewaySettings(tls_cert_file=str(pki.server_cert)))
    with pytest.raises(ValueError, match="CERT_FILE"):
        server_credentials(GatewaySettings(tls_client_ca_file=str(pki.ca_cert)))


def test_stack_up_tls_makes_a_ca_and_points_the_gateway_at_its_certificate(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "run", namespace="tls")
    ca = serve_tls(stack, tmp_path / "tls")
    settings = GatewaySettings(
        **{
            k.removeprefix("CM3LEON_").lower(): v
            for k, v in stack.settings_env().items()
            if k.startswith("CM3LEON_TLS")
        }
    )
    assert ca.read_bytes().startswith(b"-----BEGIN CERTIFICATE") and server_credentials(settings) is not None


@pytest.mark.slow
def test_tls_refuses_plaintext_and_serves_clients_trusting_the_ca(secure_stack: Stack, pki: ThrowawayPki) -> None:
    probe = free_port()
    env = {**tls_env(pki.server_cert, pki.server_key), "CM3LEON_PROBE_PORT": str(probe)}
    _, port = secure_stack.start_gateway("gateway-tls", env=env)
    target = f"127.0.0.1:{port}"
    with client(target) as plaintext:
        assert code_of(lambda: plaintext.list())[0] == grpc.StatusCode.UNAVAILABLE
    with client(target, ca_file=pki.client_cert) as wrong_trust:  # a certificate, but not the CA that signed it
        assert code_of(lambda: wrong_trust.list())[0] == grpc.StatusCode.UNAVAILABLE
    with client(target, ca_file=pki.ca_cert) as trusting:
        assert trusting.list().next_page_token is not None
    with grpc.insecure_channel(f"127.0.0.1:{probe}") as channel:  # the container's health probe, loopback only
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow
def test_mutual_tls_needs_a_client_certificate(secure_stack: Stack, pki: ThrowawayPki) -> None:
    env = tls_env(pki.server_cert, pki.server_key, client_ca_file=pki.ca_cert)
    _, port = secure_stack.start_gateway("gateway-mtls", env=env)
    target = f"127.0.0.1:{port}"
    with client(target, ca_file=pki.ca_cert) as anonymous:
        assert code_of(lambda: anonymous.list())[0] == grpc.StatusCode.UNAVAILABLE
    with client(target, ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key) as known:
        assert known.list().next_page_token is not None
