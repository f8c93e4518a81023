"""The client is resilient by default, against a real gRPC server on loopback that misbehaves on purpose:
UNAVAILABLE is retried by the channel's service config, a submit always carries a request_id (the same one on a
retry), every call has a deadline, `wait` resumes WatchJob after the last sequence it saw, and TLS (mutual, with
the API key as call credentials) works."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import cm3leon_client as api
from cm3leon_client import AsyncClient, Client, Connection
from cm3leon_client.api import jobs_pb2, jobs_pb2_grpc
from cm3leon_client.channel import API_KEY_HEADER


@dataclass
class Flaky(jobs_pb2_grpc.JobServiceServicer):
    """Answers UNAVAILABLE to the first `failures` calls of each method; WatchJob streams sequences 1..3, the first
    stream breaking (UNAVAILABLE) after sequence 2; GetJob of "slow" sleeps past any short deadline."""

    failures: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)
    watch_after: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def fail_first(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        self.keys.append(dict(context.invocation_metadata()).get(API_KEY_HEADER, ""))
        if self.calls[method] <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    def SubmitJob(self, request: jobs_pb2.SubmitJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:  # noqa: N802
        self.request_ids.append(request.request_id)
        self.fail_first("SubmitJob", context)
        return jobs_pb2.Job(job_id="j1", state=jobs_pb2.JOB_STATE_QUEUED, request_id=request.request_id)

    def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:  # noqa: N802
        self.fail_first("GetJob", context)
        if request.job_id == "slow":
            time.sleep(2.0)
        return jobs_pb2.Job(job_id=request.job_id, state=jobs_pb2.JOB_STATE_RUNNING)

    def WatchJob(self, request: jobs_pb2.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[jobs_pb2.Job]:  # noqa: N802
        self.watch_after.append(request.after_sequence)
        for sequence in range(request.after_sequence + 1, 4):
            state = jobs_pb2.JOB_STATE_SUCCEEDED if sequence == 3 else jobs_pb2.JOB_STATE_RUNNING
            yield jobs_pb2.Job(job_id=request.job_id, sequence=sequence, state=state)
            if sequence == 2 and len(self.watch_after) == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway restarts")


def serve(servicer: Flaky, credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    jobs_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)
    address = "127.0.0.1:0"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture()
def flaky() -> Iterator[tuple[Flaky, str]]:
    servicer = Flaky(failures=2)
    server, target = serve(servicer)
    yield servicer, target
    server.stop(None)


def test_unavailable_is_retried_and_a_retried_submit_keeps_its_request_id(flaky: tuple[Flaky, str]) -> None:
    servicer, target = flaky
    with Client(target, "k") as client:
        job = client.submit(api.text_to_image("a red circle"))
        assert client.get("j1").state == jobs_pb2.JOB_STATE_RUNNING
    assert servicer.calls == {"SubmitJob": 3, "GetJob": 3}, "two UNAVAILABLE answers, then the third attempt"
    assert len(set(servicer.request_ids)) == 1 and servicer.request_ids[0] == job.request_id != ""
    assert set(servicer.keys) == {"k"}, "plaintext channels carry the key as metadata"


def test_every_call_has_a_deadline(flaky: tuple[Flaky, str]) -> None:
    servicer, target = flaky
    servicer.failures = 0
    with Client(target, "k", timeout_s=0.3) as client, pytest.raises(grpc.RpcError) as raised:
        client.get("slow")
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]


def test_wait_resumes_after_the_last_sequence(flaky: tuple[Flaky, str]) -> None:
    servicer, target = flaky
    seen: list[int] = []
    with Client(target, "k") as client:
        final = client.wait("j1", on_update=lambda job: seen.append(job.sequence))
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED and seen == [1, 2, 3]
    assert servicer.watch_after == [0, 2]


def test_async_wait_resumes_too(flaky: tuple[Flaky, str]) -> None:
    servicer, target = flaky

    async def main() -> jobs_pb2.Job:
        async with AsyncClient(target, "k") as client:
            submitted = await client.submit(api.text_to_image("a red circle"))
            assert submitted.request_id
            return await client.wait("j1")

    assert asyncio.run(main()).sequence == 3
    assert servicer.watch_after == [0, 2]


# ----- TLS -----


def certificate(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, ca: bool) -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_mutual_tls_with_the_key_as_call_credentials(tmp_path: Path) -> None:
    ca = certificate("cm3leon test CA", None, ca=True)
    server_cert, server_key = pem(*certificate("gateway.test", ca, ca=False))
    client_cert, client_key = pem(*certificate("client.test", ca, ca=False))
    ca_pem = pem(*ca)[0]
    files = {"ca.pem": ca_pem, "client.pem": client_cert, "client.key": client_key}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    credentials = grpc.ssl_server_credentials([(server_key, server_cert)], ca_pem, require_client_auth=True)
    servicer = Flaky()
    server, target = serve(servicer, credentials)
    try:
        connection = Connection(
            target=target,
            api_key="tls-key",
            ca_file=tmp_path / "ca.pem",
            cert_file=tmp_path / "client.pem",
            key_file=tmp_path / "client.key",
            server_name="gateway.test",
        )
        assert connection.metadata() == (), "on TLS the key travels as call credentials"
        with Client(connection=connection) as client:
            assert client.get("j1").job_id == "j1"
        assert servicer.keys == ["tls-key"]
        without_cert = Connection(target=target, ca_file=tmp_path / "ca.pem", server_name="gateway.test", timeout_s=5)
        with Client(connection=without_cert) as client, pytest.raises(grpc.RpcError) as raised:
            client.get("j1")
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    finally:
        server.stop(None)
    with pytest.raises(ValueError, match="both a client certificate and its key"):
        Connection(target=target, cert_file=tmp_path / "client.pem").credentials()
