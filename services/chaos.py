"""Chaos soak: many jobs through the embedded stack while its parts are killed, and a count of what became of them.

    python -m services.chaos --out bench/results [--jobs 500 --clients 20 --workers 2]

Two workers serve N text->image jobs from 20 clients (each submits with its own request id, retrying UNAVAILABLE
with the same id, then polls until the job is final), while a worker is SIGKILLed (whole process group, as a
lost container) every `--kill-every` seconds and started again, Redis is restarted once (append-only file) and
S3 is stopped for `--s3-outage` seconds. Writes `chaos.json`: accepted, succeeded, failed, cancelled, lost
(accepted, then gone from the job store), stuck (accepted, never final), duplicated_outputs (a second job for one
request id, or a result with other than one image), p50/p99 latency from accept to final, failure codes.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis

from cm3leon_client import Client
from cm3leon_client.api import jobs_pb2
from services.keys import Keys
from services.load import numbered_job
from services.stack import Stack

API_KEYS = {"chaos-key": "chaos"}
FINAL = {jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED}
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
# Recovery settings of the soak's stack: short leases and a fast reaper (the defaults suit long jobs).
RECOVERY_ENV = {
    "CM3LEON_LEASE_TTL_S": "6",
    "CM3LEON_REAPER_INTERVAL_S": "1",
    "CM3LEON_OUTBOX_AGE_S": "3",
    "CM3LEON_REPUBLISH_AFTER_S": "20",
    "CM3LEON_S3_RETRY_DEADLINE_S": "60",
}


@dataclass
class Outcome:
    request_id: str
    job_id: str = ""
    state: str = "NOT_ACCEPTED"
    error_code: str = ""
    latency_s: float = 0.0
    images: int = 0
    submit_error: str = ""


@dataclass
class Events:
    worker_kills: int = 0
    redis_restarts: int = 0
    s3_outages: int = 0
    log: list[str] = field(default_factory=list)


def call_with_retries(call: object, deadline: float) -> object:
    """`call()` retried with backoff on the codes a client should retry, until `deadline` (monotonic)."""
    delay = 0.2
    while True:
        try:
            return call()  # type: ignore[operator]
        except grpc.RpcError as error:
            if error.code() not in RETRYABLE or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def run_client(target: str, work: list[tuple[int, str]], outcomes: list[Outcome], job_timeout_s: float) -> None:
    with Client(target, "chaos-key", timeout_s=10.0) as client:
        for index, request_id in work:
            follow_job(client, index, request_id, outcomes[index], time.monotonic() + job_timeout_s)


def follow_job(client: Client, index: int, request_id: str, outcome: Outcome, deadline: float) -> None:
    """Submit one job (retrying with its request id) and poll it until it is final or the deadline passes."""
    request = numbered_job(index)
    try:
        job = call_with_retries(lambda: client.submit(request, request_id=request_id), deadline)
    except grpc.RpcError as error:
        outcome.submit_error = error.code().name
        return
    accepted = time.monotonic()
    outcome.job_id, outcome.state = job.job_id, "ACCEPTED"  # type: ignore[attr-defined]
    while time.monotonic() < deadline:
        try:
            job = call_with_retries(lambda: client.get(outcome.job_id), deadline)
        except grpc.RpcError as error:
            outcome.error_code = f"GetJob {error.code().name}"
            return
        if job.state in FINAL:  # type: ignore[attr-defined]
            outcome.state = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")  # type: ignore[attr-defined]
            outcome.error_code = job.error.code  # type: ignore[attr-defined]
            outcome.images = len(job.result.images)  # type: ignore[attr-defined]
            outcome.latency_s = time.monotonic() - accepted
            return
        time.sleep(0.25)


def chaos(
    stack: Stack, worker_env: dict[str, str], args: argparse.Namespace, done: threading.Event, events: Events
) -> None:
    """Kill a worker every `kill_every` s (and start it again), restart Redis once, stop S3 once."""
    started = time.monotonic()
    names = [f"worker{i}" for i in range(args.workers)]
    redis_at, s3_at = args.kill_every * 1.5, args.kill_every * 2.5
    turn = 0
    while not done.wait(1.0):
        elapsed = time.monotonic() - started
        if redis_at is not None and elapsed >= redis_at:
            events.log.append(f"{elapsed:.0f}s redis restart")
            stack.restart_redis()
            events.redis_restarts += 1
            redis_at = None
        elif s3_at is not None and elapsed >= s3_at:
            events.log.append(f"{elapsed:.0f}s s3 stopped for {args.s3_outage} s")
            stack.stop_service("s3")
            time.sleep(args.s3_outage)
            stack.start_s3(same_ports=True)
            events.s3_outages += 1
            s3_at = None
        elif elapsed >= (events.worker_kills + 1) * args.kill_every:
            name = names[turn % len(names)]
            turn += 1
            events.log.append(f"{elapsed:.0f}s SIGKILL {name}")
            stack.kill_service(name)
            events.worker_kills += 1
            stack.start_worker(name, worker_env)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(stack: Stack, outcomes: list[Outcome], events: Events, args: argparse.Namespace, wall_s: float) -> dict:
    client = redis.Redis(port=stack.redis_port)
    keys = Keys(stack.namespace)
    accepted = [o for o in outcomes if o.job_id]
    lost = [o for o in accepted if client.get(keys.job(o.job_id)) is None]
    stuck = [o for o in accepted if o not in lost and o.state == "ACCEPTED"]
    jobs_in_index = client.zcard(keys.tenant_jobs(API_KEYS["chaos-key"]))
    succeeded = [o for o in accepted if o.state == "SUCCEEDED"]
    duplicated = max(0, jobs_in_index - len(accepted)) + sum(1 for o in succeeded if o.images != 1)
    deliveries = Counter()
    for o in accepted:
        raw = client.get(keys.job(o.job_id))
        if raw:
            deliveries[json.loads(raw)["deliveries"]] += 1
    latencies = [o.latency_s for o in accepted if o.state in ("SUCCEEDED", "FAILED", "CANCELLED")]
    return {
        "jobs": args.jobs,
        "clients": args.clients,
        "workers": args.workers,
        "accepted": len(accepted),
        "not_accepted": len(outcomes) - len(accepted),
        "succeeded": len(succeeded),
        "failed": sum(1 for o in accepted if o.state == "FAILED"),
        "cancelled": sum(1 for o in accepted if o.state == "CANCELLED"),
        "lost": len(lost),
        "stuck": len(stuck),
        "duplicated_outputs": duplicated,
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else 0.0,
        "latency_p99_s": round(percentile(latencies, 0.99), 3),
        "failure_codes": dict(Counter(o.error_code for o in accepted if o.state == "FAILED")),
        "submit_errors": dict(Counter(o.submit_error for o in outcomes if o.submit_error)),
        "deliveries": {str(k): v for k, v in sorted(deliveries.items())},
        "worker_kills": events.worker_kills,
        "redis_restarts": events.redis_restarts,
        "s3_outages": events.s3_outages,
        "events": events.log,
        "wall_s": round(wall_s, 1),
        "retrieval": "off",
        "model_dir": args.model_dir,
    }


def soak(args: argparse.Namespace, workdir: Path) -> dict:
    stack = Stack(workdir, namespace="chaos", environment={"CM3LEON_API_KEYS": json.dumps(API_KEYS), **RECOVERY_ENV})
    worker_env = {
        "CM3LEON_MODEL_DIR": args.model_dir,
        "CM3LEON_RETRIEVER_DIR": str(workdir / "no-retriever"),  # retrieval off: the soak is about the stack
        "CM3LEON_DEVICE": "cpu",
        "CM3LEON_PREVIEWS_PER_IMAGE": "1",
        "OMP_NUM_THREADS": "1",
    }
    try:
        stack.start_redis()
        stack.start_s3()
        for i in range(args.workers):
            stack.start_worker(f"worker{i}", worker_env)
        stack.start_gateway()
        target = f"127.0.0.1:{stack.gateway_port}"
        outcomes = [Outcome(request_id=f"chaos-{i}") for i in range(args.jobs)]
        work = [(i, o.request_id) for i, o in enumerate(outcomes)]
        random.Random(0).shuffle(work)
        shares = [work[c :: args.clients] for c in range(args.clients)]
        done, events = threading.Event(), Events()
        chaos_thread = threading.Thread(target=chaos, args=(stack, worker_env, args, done, events), daemon=True)
        started = time.monotonic()
        clients = [
            threading.Thread(target=run_client, args=(target, share, outcomes, args.job_timeout_s)) for share in shares
        ]
        chaos_thread.start()
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        done.set()
        chaos_thread.join()
        return summarise(stack, outcomes, events, args, time.monotonic() - started)
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results", help="directory of chaos.json")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=10.0, help="seconds between worker kills")
    parser.add_argument("--s3-outage", type=float, default=5.0, help="seconds S3 is stopped for")
    parser.add_argument("--job-timeout-s", type=float, default=600.0, help="a client gives up on a job after this")
    parser.add_argument("--model-dir", default="models/shapes")
    parser.add_argument("--workdir", help="where the stack's processes keep data and logs (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cm3leon-chaos-") as scratch:
        report = soak(args, Path(args.workdir or scratch))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "events"}, indent=2))
    return 0 if report["lost"] == 0 and report["stuck"] == 0 and report["duplicated_outputs"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
