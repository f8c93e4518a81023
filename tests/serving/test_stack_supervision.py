"""`cm3leon stack up` keeps its services up: a process that exits is started again with the same arguments, ports
and data, after a delay that grows while it keeps crashing and resets once it ran a while."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import redis

from services.stack import RESTART_DELAYS_S, STABLE_S, Child, Stack

FIRST_DELAY_S, MOST_DELAY_S = RESTART_DELAYS_S


def crash_and_revive(stack: Stack, name: str) -> Child:
    """SIGKILL a child's process group, as a crash would; the supervisor sees it exited, then starts it again."""
    (child,) = [c for c in stack.children if c.name == name]
    os.killpg(child.process.pid, signal.SIGKILL)
    child.process.wait()
    assert stack.revive_exited() == [], "not before its delay"
    assert child.restart_at is not None and child.restart_delay_s == FIRST_DELAY_S
    assert stack.revive_exited(child.restart_at) == [child]
    return child


def test_a_crashing_process_is_started_again_later_and_later_until_it_stays_up(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    child = stack.spawn("flaky", [sys.executable, "-c", "import sys; print('up'); sys.exit(3)"])
    child.process.wait()
    now = child.started_at + 1.0  # it exits within STABLE_S of each start: a crash loop
    delays = []
    for _ in range(9):
        assert stack.revive_exited(now) == [], "never before its delay"
        delays.append(child.restart_delay_s)
        now = child.restart_at  # type: ignore[assignment]
        assert stack.revive_exited(now) == [child]
        child.process.wait()
        now += 1.0
    assert delays == [min(FIRST_DELAY_S * 2**i, MOST_DELAY_S) for i in range(9)]
    assert child.exit_code == 3 and child.restarts == 9
    assert child.own_log() == "up\n" and (tmp_path / "flaky.log").read_text() == "up\n" * 10
    # Once it ran longer than STABLE_S, its next exit waits the first delay again.
    stack.revive_exited(now + STABLE_S)
    assert child.restart_delay_s == FIRST_DELAY_S


def test_a_process_stopped_on_purpose_stays_stopped(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        stack.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
        stack.stop_service("sleeper")
        assert stack.revive_exited(time.monotonic() + MOST_DELAY_S) == [] and stack.children == []
    finally:
        stack.stop()


def test_a_crashed_redis_comes_back_on_its_port_with_its_data(tmp_path: Path) -> None:
    stack = Stack(tmp_path, appendfsync="always")
    try:
        stack.start_redis()
        redis.Redis(port=stack.redis_port).set("accepted", "job-1")
        child = crash_and_revive(stack, "redis")
        assert child.exit_code == -signal.SIGKILL and child.restarts == 1
        stack.wait_until(child, redis.Redis(port=stack.redis_port, socket_timeout=1.0).ping, "redis")
        assert redis.Redis(port=stack.redis_port).get("accepted") == b"job-1"
    finally:
        stack.stop()


@pytest.mark.slow
def test_a_crashed_gateway_listens_again_on_the_same_port(tmp_path: Path) -> None:
    stack = Stack(tmp_path, environment={"CM3LEON_DEV_KEYS": "true"})  # a gateway starts only with some key
    try:
        stack.start_redis()
        stack.start_s3()
        _, port = stack.start_gateway()
        child = crash_and_revive(stack, "gateway")

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return f"GATEWAY_PORT={port}" in child.own_log()

        stack.wait_until(child, listening, "gateway")
        assert stack.gateway_port == port
    finally:
        stack.stop()
