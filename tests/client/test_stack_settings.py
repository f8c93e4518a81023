"""`cm3leon stack up` honours the CM3LEON_* settings it passes to its processes: the API keys (a random key for
the session when none are set, printed with the client's environment variables), the namespace, the limits."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import redis
import typer

from cm3leon_client import Client, text_to_image
from cm3leon_stack.launch import StackKeys, check_settings, new_stack
from services.auth import SCOPES, hashed_entry
from services.keys import Keys
from services.presence import live_workers
from services.stack import ROOT, Stack

READY_LINE = "Ctrl-C stops everything"


def test_a_session_key_is_made_when_none_is_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CM3LEON_API_KEYS", raising=False)
    first, second = StackKeys.from_environment(), StackKeys.from_environment()
    assert first.session_key and first.session_key != second.session_key and "dev-key" not in first.keys
    assert f"CM3LEON_API_KEY={first.session_key}" in "\n".join(first.describe("127.0.0.1:1"))
    stack = new_stack(tmp_path, first)
    stored = json.loads(stack.settings_env()["CM3LEON_API_KEYS"])
    assert stored == hashed_entry(first.session_key, "dev", SCOPES), "the made key is passed on as its hash only"
    assert first.session_key not in json.dumps(stored)


def test_configured_keys_and_namespace_are_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CM3LEON_API_KEYS", json.dumps({"team-key": "team"}))
    monkeypatch.setenv("CM3LEON_NAMESPACE", "team-ns")
    keys = StackKeys.from_environment()
    assert keys.keys == {"team-key": "team"} and keys.session_key is None
    assert "team-key" not in "\n".join(keys.describe("127.0.0.1:1")), "a configured key is never printed"
    stack = new_stack(tmp_path, keys)
    assert stack.namespace == "team-ns" and stack.settings_env()["CM3LEON_NAMESPACE"] == "team-ns"


def test_a_bad_setting_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CM3LEON_MAX_QUEUED_JOBS", "-1")
    with pytest.raises(typer.BadParameter, match=r"^invalid setting: CM3LEON_MAX_QUEUED_JOBS: .*greater than"):
        check_settings()


def read_until_ready(process: subprocess.Popen[str], timeout_s: float) -> list[str]:
    """The command's lines up to READY_LINE (a reader thread: a pipe's buffered lines do not wake select)."""
    lines: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if any(line.rstrip("\n") == READY_LINE for line in list(lines)):
            return lines  # the reader goes on appending the command's later lines
        time.sleep(0.2)
    raise AssertionError("stack up did not come up:\n" + "".join(lines))


@pytest.mark.slow
def test_stack_up_uses_the_configured_keys_and_namespace(stack: Stack, tmp_path: Path) -> None:
    model_dir = stack.worker_env["CM3LEON_MODEL_DIR"]  # type: ignore[attr-defined]  (the tiny test model)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "CM3LEON_DEVICE": "cpu",
        "CM3LEON_API_KEYS": json.dumps({"team-key": "team"}),
        "CM3LEON_NAMESPACE": "team-ns",
        "CM3LEON_MAX_QUEUED_JOBS": "0",  # a limit the gateway must honour: every submit is shed
    }
    command = [sys.executable, "-c", "import cm3leon_cli; cm3leon_cli.main()", "stack", "up", "--model", model_dir]
    command += ["--retriever", str(tmp_path / "none"), "--memory-path", str(tmp_path / "q"), "--workdir", str(tmp_path)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = read_until_ready(process, timeout_s=180)
        text = "".join(lines)
        target = re.search(r"^gateway\s+(\S+)", text, re.M).group(1)  # type: ignore[union-attr]
        assert "from CM3LEON_API_KEYS" in text and "team-key" not in text and "dev-key" not in text
        assert f"export CM3LEON_TARGET={target}" in text
        with Client(target, "team-key") as client:
            assert client.list().jobs is not None
            with pytest.raises(grpc.RpcError) as shed:
                client.submit(text_to_image("a red circle"))
            assert shed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        with Client(target, "dev-key") as client, pytest.raises(grpc.RpcError) as refused:
            client.list()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        redis_url = re.search(r"^redis\s+(\S+)", text, re.M).group(1)  # type: ignore[union-attr]
        (crashed,) = [w["pid"] for w in live_workers(redis.Redis.from_url(redis_url), Keys("team-ns")).values()]
        # A worker that crashes is started again (after a second), loads the model and registers anew.
        os.kill(crashed, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not any(line.startswith("worker exited (") for line in list(lines)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert any(line.startswith(f"worker exited ({-signal.SIGKILL})") for line in list(lines)), "".join(lines)
        while time.monotonic() < deadline:
            pids = {w["pid"] for w in live_workers(redis.Redis.from_url(redis_url), Keys("team-ns")).values()}
            if pids - {crashed}:
                break
            time.sleep(0.2)
        assert pids - {crashed}, "the worker came back in the stack's namespace"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    time.sleep(0.5)  # the reader's last lines
    assert process.returncode == 0 and "stopped\n" in lines
