"""The embedded stack's servers get their ports in two steps (pick a free one, then the server binds it), so another
process can take a port in between: such a server is started again on new ports instead of failing the stack."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import services.stack as stack_module
from services.stack import WEED_PORT_FLAGS, Stack


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port bound by another socket, as a client's outgoing connection holds one (connecting to it is refused)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        yield taken.getsockname()[1]


def test_free_ports_are_distinct() -> None:
    ports = stack_module.free_ports(32)
    assert len(set(ports)) == 32 and all(0 < p < 65536 for p in ports)


@pytest.mark.slow
def test_servers_whose_port_was_taken_meanwhile_start_again_on_others(
    tmp_path: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_free_port, real_free_ports = stack_module.free_port, stack_module.free_ports
    first_pick = {"redis": True, "s3": True}

    def free_port() -> int:  # the first pick is a port another process holds
        if first_pick["redis"]:
            first_pick["redis"] = False
            return busy_port
        return real_free_port()

    def free_ports(count: int) -> list[int]:
        ports = real_free_ports(count)
        if first_pick["s3"]:
            first_pick["s3"] = False
            ports[WEED_PORT_FLAGS.index("s3.port")] = busy_port
        return ports

    monkeypatch.setattr(stack_module, "free_port", free_port)
    monkeypatch.setattr(stack_module, "free_ports", free_ports)
    stack = Stack(tmp_path)
    try:
        stack.start_redis()
        stack.start_s3()
        assert busy_port not in (stack.redis_port, stack.s3_port)
        assert redis.Redis(port=stack.redis_port).ping()
        from services.objectstore import ObjectStore

        ObjectStore.from_settings(stack.settings()).ensure_bucket(timeout_s=5.0)
        # Both first tries did fail on the taken port (their logs stay), and only the live servers are children.
        for name in ("redis", "s3"):
            log = (tmp_path / f"{name}.log").read_text().lower()
            assert any(marker in log for marker in stack_module.PORT_TAKEN), name
        assert [child.name for child in stack.children] == ["redis", "s3"]
    finally:
        stack.stop()


@pytest.mark.slow
def test_a_reused_workdir_reads_the_new_gateway_port_not_an_old_log_line(tmp_path: Path) -> None:
    """Logs are appended across runs (`make demo` twice in one checkout): the port must come from this gateway."""
    (tmp_path / "gateway.log").write_text("GATEWAY_PORT=1\nan earlier run's output\n")
    stack = Stack(tmp_path, environment={"CM3LEON_DEV_KEYS": "true"})  # a gateway starts only with some key
    try:
        stack.start_redis()
        stack.start_s3()
        _, port = stack.start_gateway()
        assert port != 1 and port == stack.gateway_port
        with socket.create_connection(("127.0.0.1", port), timeout=5.0):
            pass  # the gateway really listens there
        assert "GATEWAY_PORT=1\n" not in stack.children[-1].own_log()
    finally:
        stack.stop()
