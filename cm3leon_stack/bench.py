"""The stack benchmark: the whole serving path (gRPC gateway, Redis, Celery, a worker, S3) measured as a user sees it.

    cm3leon bench stack --out bench/results [--model models/shapes --sequential 16 --rounds 2 --submits 2000]

Five phases on one embedded stack (`services.stack`), text->image jobs with default settings (retrieval on):

- sequential: one client, one job at a time -> jobs/s, one job's latency, and the system's own cost per job
  (`overhead_*`: end-to-end latency from submit to the final snapshot minus the engine's own time, which the
  worker records on the job as `usage.seconds`);
- concurrent: 16 clients, each `rounds` jobs back to back -> `stack_speedup_16` (jobs/s over the sequential
  rate) and `stack_p99_latency_ratio_16` (p99 latency over 16 x one job's latency);
- engine ceiling: the same jobs straight into a worker-loaded engine, alone and from 16 threads
  (`cm3leon_stack.ceiling`): the decoder's own speedup, which the stack cannot exceed, and its prefill / decode split;
- memory: one worker with 64 job threads serving 64 jobs at once -> `worker_peak_rss_mb` (VmHWM);
- submits: SubmitJob from 64 concurrent async clients to a gateway whose queues no worker consumes ->
  `gateway_submits_per_s`, with the gateway's and the clients' CPU time per submit (which side limits it).

Writes `stack.json` (every measurement and the parameters) and merges the headline keys into `summary.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

import cm3leon_client as api
from cm3leon_client import AsyncClient, Client
from cm3leon_client.api import jobs_pb2
from services.keys import Keys
from services.load import numbered_job
from services.presence import live_workers
from services.stack import Stack

API_KEY = "bench-key"
PROFILE_TOP = 25  # functions of the gateway's profile kept in stack.json
# The jobs' gateway: no queue cap or tenant quota refuses a measured job (one tenant runs them all).
UNLIMITED = {
    "CM3LEON_MAX_QUEUED_JOBS": "1000000",
    "CM3LEON_TENANT_RATE_PER_S": "1000000",
    "CM3LEON_TENANT_BURST": "1000000",
    "CM3LEON_TENANT_MAX_QUEUED_COST": "1000000",
}
# The submits' gateway: room for every submit in the queue; per-tenant quotas stay the defaults.
UNQUEUED = {"CM3LEON_MAX_QUEUED_JOBS": "1000000"}
TENANT_QUEUED_JOBS = 32  # one-image jobs a tenant may have queued under the default quota (tenant_max_queued_cost)
SUBMIT_NAMESPACE = "benchsubmit"  # a namespace no worker consumes: submits only queue
SUMMARY_KEYS = (
    "stack_speedup_16",
    "stack_p99_latency_ratio_16",
    "overhead_p50_ms",
    "overhead_p99_ms",
    "gateway_submits_per_s",
    "worker_peak_rss_mb",
)
RSS_SAMPLE_S = 0.1
JOB_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Timing:
    """One job as its client saw it."""

    latency_s: float  # submit sent -> final snapshot received
    engine_s: float  # the engine's own time, recorded by the worker (usage.seconds)
    succeeded: bool


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run_job(client: Client, index: int) -> Timing:
    """Submit one default text->image job and wait for its final snapshot."""
    started = time.perf_counter()
    job = client.submit(numbered_job(index))
    final = client.wait(job.job_id, timeout_s=JOB_TIMEOUT_S)
    latency = time.perf_counter() - started
    return Timing(latency, final.usage.seconds, final.state == jobs_pb2.JOB_STATE_SUCCEEDED)


def timed_clients(target: str, clients: int, rounds: int, first_index: int) -> tuple[list[Timing], float]:
    """`clients` threads, each with its own channel, each running `rounds` jobs back to back -> timings, wall s."""
    timings: list[Timing] = []
    lock = threading.Lock()
    connected = [Client(target, API_KEY, timeout_s=30.0) for _ in range(clients)]
    go = threading.Barrier(clients + 1)

    def work(client: Client, number: int) -> None:
        go.wait()
        for round_ in range(rounds):
            timing = run_job(client, first_index + number * rounds + round_)
            with lock:
                timings.append(timing)

    threads = [threading.Thread(target=work, args=(c, n)) for n, c in enumerate(connected)]
    for thread in threads:
        thread.start()
    go.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for client in connected:
        client.close()
    return timings, wall


def latency_summary(timings: Sequence[Timing], wall_s: float) -> dict[str, float]:
    latencies = [t.latency_s for t in timings]
    return {
        "jobs": len(timings),
        "succeeded": sum(t.succeeded for t in timings),
        "wall_s": wall_s,
        "jobs_per_s": len(timings) / wall_s,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "engine_p50_s": percentile([t.engine_s for t in timings], 50),
    }


def overhead_ms(timings: Sequence[Timing]) -> dict[str, float]:
    """End-to-end latency minus the engine's own time, per job (ms)."""
    costs = [(t.latency_s - t.engine_s) * 1000 for t in timings if t.succeeded]
    return {"overhead_p50_ms": percentile(costs, 50), "overhead_p99_ms": percentile(costs, 99)}


def worker_info(stack: Stack) -> dict[str, Any]:
    """The heartbeat of the stack's (one) live worker: its pid, model, kinds and job threads."""
    infos = live_workers(redis.Redis(port=stack.redis_port), Keys(stack.namespace)).values()
    return max(infos, key=lambda info: int(info["pid"]))


def proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    return time.process_time()


async def many_jobs(target: str, count: int) -> list[Timing]:
    """`count` jobs submitted at once from one async client, each waited for."""
    async with AsyncClient(target, API_KEY, timeout_s=60.0) as client:

        async def one(index: int) -> Timing:
            started = time.perf_counter()
            job = await client.submit(numbered_job(index))
            final = await client.wait(job.job_id, timeout_s=JOB_TIMEOUT_S)
            succeeded = final.state == jobs_pb2.JOB_STATE_SUCCEEDED
            return Timing(time.perf_counter() - started, final.usage.seconds, succeeded)

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def peak_rss(stack: Stack, target: str, jobs: int) -> dict[str, float]:
    """One worker process serving `jobs` jobs at once: its resident memory idle, sampled peak and VmHWM (MB)."""
    pid = int(worker_info(stack)["pid"])
    idle = proc_status_kb(pid, "VmRSS")
    peak = [idle]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(RSS_SAMPLE_S):
            peak[0] = max(peak[0], proc_status_kb(pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    timings = asyncio.run(many_jobs(target, jobs))
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    return {
        "concurrent_jobs": jobs,
        "succeeded": sum(t.succeeded for t in timings),
        "wall_s": wall,
        "idle_rss_mb": idle / 1024,
        "sampled_peak_rss_mb": peak[0] / 1024,
        "worker_peak_rss_mb": proc_status_kb(pid, "VmHWM") / 1024,
    }


async def submit_storm(target: str, clients: int, total: int) -> tuple[float, int]:
    """`total` SubmitJob calls from `clients` async clients (one channel and tenant each), as fast as answered ->
    wall s, accepted count."""
    per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    connected = [AsyncClient(target, f"submit-key-{i}", timeout_s=60.0) for i in range(clients)]
    request = api.text_to_image("a red circle", seed=1)
    accepted = 0

    async def submitter(client: AsyncClient, count: int) -> None:
        nonlocal accepted
        for _ in range(count):
            job = await client.submit(request)
            accepted += job.state == jobs_pb2.JOB_STATE_QUEUED

    await asyncio.gather(*(c.channel.channel_ready() for c in connected))  # channel setup is not a submit
    started = time.perf_counter()
    await asyncio.gather(*(submitter(c, n) for c, n in zip(connected, per_client, strict=True)))
    wall = time.perf_counter() - started
    for client in connected:
        await client.close()
    return wall, accepted


def command_stats(stack: Stack) -> dict[str, tuple[int, int]]:
    """Redis's own count: command -> (calls, microseconds spent)."""
    stats = redis.Redis(port=stack.redis_port).info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}


def redis_cost(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], total: int) -> dict[str, Any]:
    """Redis commands per submit (by command) and the server's microseconds per submit."""
    calls = {name: (after[name][0] - before.get(name, (0, 0))[0]) / total for name in after}
    usec = sum(after[name][1] - before.get(name, (0, 0))[1] for name in after) / total
    return {
        "redis_commands_per_submit": {name: round(count, 2) for name, count in sorted(calls.items()) if count},
        "redis_server_us_per_submit": usec,
    }


def api_keys(submit_clients: int) -> dict[str, str]:
    """The jobs' key, and one key (tenant) per submitting client: each stays within the default tenant quotas."""
    return {API_KEY: "bench", **{f"submit-key-{i}": f"submitter-{i}" for i in range(submit_clients)}}


def gateway_profile(stack: Stack, clients: int, total: int) -> list[dict[str, Any]]:
    """Where the gateway's main thread spends its time during a submit storm (cProfile, which slows it: the
    throughput is measured without it): the top functions by own time, per submit."""
    import pstats

    path = stack.workdir / "gateway-submits.prof"
    env = {"CM3LEON_NAMESPACE": f"{SUBMIT_NAMESPACE}p", **UNQUEUED}
    child, port = stack.start_gateway("gateway-profiled", env, profile_to=path)
    try:
        asyncio.run(submit_storm(f"127.0.0.1:{port}", clients, total))
    finally:
        child.stop()
        stack.children.remove(child)
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:PROFILE_TOP]
    return [
        {
            "function": f"{Path(file).name}:{line}({name})",
            "calls_per_submit": round(calls / total, 2),
            "own_ms_per_submit": round(own * 1000 / total, 4),
            "cumulative_ms_per_submit": round(cumulative * 1000 / total, 4),
        }
        for (file, line, name), (_, calls, own, cumulative, _) in rows
    ]


def submit_rate(stack: Stack, clients: int, total: int) -> dict[str, Any]:
    """SubmitJob throughput of a gateway whose queues have no worker (`clients` tenants, one each, with the
    default per-tenant quotas), with each side's CPU time and Redis's work per submit."""
    child, port = stack.start_gateway("gateway-submits", {"CM3LEON_NAMESPACE": SUBMIT_NAMESPACE, **UNQUEUED})
    redis_pid = next(c.process.pid for c in stack.children if c.name == "redis")
    try:
        before = command_stats(stack)
        gateway_cpu, own_cpu, redis_cpu = cpu_seconds(child.process.pid), own_cpu_seconds(), cpu_seconds(redis_pid)
        wall, accepted = asyncio.run(submit_storm(f"127.0.0.1:{port}", clients, total))
        gateway_cpu = cpu_seconds(child.process.pid) - gateway_cpu
        own_cpu, redis_cpu = own_cpu_seconds() - own_cpu, cpu_seconds(redis_pid) - redis_cpu
        commands = redis_cost(before, command_stats(stack), total)
    finally:
        child.stop()
        stack.children.remove(child)
    return {
        "clients": clients,
        "submits": total,
        "accepted": accepted,
        "wall_s": wall,
        "gateway_submits_per_s": total / wall,
        "gateway_cpu_ms_per_submit": gateway_cpu * 1000 / total,
        "gateway_cpu_utilisation": gateway_cpu / wall,
        "client_cpu_ms_per_submit": own_cpu * 1000 / total,
        "redis_cpu_ms_per_submit": redis_cpu * 1000 / total,
        **commands,
    }


def engine_ceiling(args: argparse.Namespace, model: Path, retriever: Path, memory_path: Path) -> dict[str, Any]:
    """The same jobs straight into a worker-loaded engine (`cm3leon_stack.ceiling`, in a process of its own): what
    the stack cannot exceed, with the prefill / decode split that limits it."""
    command = [sys.executable, "-m", "cm3leon_stack.ceiling", "--model", str(model), "--retriever", str(retriever)]
    command += ["--memory-path", str(memory_path), "--memory", args.memory, "--concurrency", str(args.concurrency)]
    command += ["--sequential", str(args.sequential // 2), "--rounds", str(args.rounds)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"engine ceiling failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def phase(name: str, run: Callable[[], Any]) -> Any:
    print(f"stack bench: {name} ...", flush=True)
    started = time.perf_counter()
    result = run()
    print(f"stack bench: {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    return result


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from cm3leon_stack.launch import ensure_memory

    model = Path(args.model).resolve()
    retriever = Path(args.retriever).resolve()
    memory_path = Path(args.memory_path).resolve()
    ensure_memory(retriever, model / "vq", memory_path, args.memory, args.memory_docs)
    environment = {"CM3LEON_API_KEYS": json.dumps(api_keys(args.submit_clients)), **UNLIMITED}
    stack = Stack(workdir, namespace="benchstack", environment=environment)
    worker_env = {
        "CM3LEON_MODEL_DIR": str(model),
        "CM3LEON_RETRIEVER_DIR": str(retriever),
        "CM3LEON_MEMORY_PATH": str(memory_path),
        "CM3LEON_MEMORY_NAME": args.memory,
        "CM3LEON_WORKER_JOBS": str(args.worker_jobs),
    }
    results: dict[str, Any] = {}
    try:
        stack.start_redis()
        stack.start_s3()
        stack.start_gateway()
        results["submits"] = phase("submits", lambda: submit_rate(stack, args.submit_clients, args.submits))
        results["submits"]["profile_main_thread"] = phase(
            "submits profiled", lambda: gateway_profile(stack, args.submit_clients, args.profile_submits)
        )
        results["engine_ceiling"] = phase("engine ceiling", lambda: engine_ceiling(args, model, retriever, memory_path))
        phase("worker start", lambda: stack.start_worker("worker", worker_env))
        results["worker"] = worker_info(stack)
        target = f"127.0.0.1:{stack.gateway_port}"
        phase("warm-up", lambda: timed_clients(target, 1, args.warmup, 10_000))
        sequential, seq_wall = phase("sequential", lambda: timed_clients(target, 1, args.sequential, 0))
        concurrent, con_wall = phase(
            "concurrent", lambda: timed_clients(target, args.concurrency, args.rounds, args.sequential)
        )
        stack.stop_service("worker")
        rss_env = {**worker_env, "CM3LEON_WORKER_JOBS": str(args.rss_jobs)}
        phase("memory worker start", lambda: stack.start_worker("worker-rss", rss_env))
        results["memory"] = phase("memory", lambda: peak_rss(stack, target, args.rss_jobs))
        results["worker_log_tail"] = [c.log_tail(3) for c in stack.children if c.name.startswith("worker")]
    finally:
        stack.stop()
    results["sequential"] = latency_summary(sequential, seq_wall)
    results["concurrent"] = latency_summary(concurrent, con_wall)
    results["overhead"] = overhead_ms(sequential)
    return results


def headline(results: dict[str, Any], concurrency: int) -> dict[str, float]:
    sequential, concurrent = results["sequential"], results["concurrent"]
    one_job = sequential["latency_p50_s"]
    return {
        "stack_speedup_16": concurrent["jobs_per_s"] / sequential["jobs_per_s"],
        "stack_p99_latency_ratio_16": concurrent["latency_p99_s"] / (concurrency * one_job),
        **results["overhead"],
        "gateway_submits_per_s": results["submits"]["gateway_submits_per_s"],
        "worker_peak_rss_mb": results["memory"]["worker_peak_rss_mb"],
    }


def write(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "stack.json").write_text(json.dumps(report, indent=2) + "\n")
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update({key: report[key] for key in (*SUMMARY_KEYS, "machine")})
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cm3leon bench stack", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results", help="directory of stack.json and summary.json")
    parser.add_argument("--model", default="models/shapes")
    parser.add_argument("--retriever", default="models/shapes/retriever")
    parser.add_argument("--memory-path", default="out/qdrant", help="Qdrant local-mode directory (built if empty)")
    parser.add_argument("--memory", default="shapes", help="memory (collection) name")
    parser.add_argument("--memory-docs", type=int, default=2000, help="documents to build the memory with")
    parser.add_argument("--worker-jobs", type=int, default=0, help="CM3LEON_WORKER_JOBS (0: the device's)")
    parser.add_argument("--warmup", type=int, default=2, help="jobs before anything is measured")
    parser.add_argument("--sequential", type=int, default=16, help="jobs run one at a time")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=2, help="jobs each concurrent client runs back to back")
    parser.add_argument("--rss-jobs", type=int, default=64, help="jobs at once on the memory phase's worker")
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--submit-clients", type=int, default=64)
    parser.add_argument("--profile-submits", type=int, default=500, help="submits of the profiled storm")
    parser.add_argument("--workdir", help="where the stack's processes keep data and logs (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from cm3leon.bench.serve import machine

    args = parse(argv)
    if max(args.submits, args.profile_submits) > TENANT_QUEUED_JOBS * args.submit_clients:
        raise SystemExit(f"--submits: at most {TENANT_QUEUED_JOBS} per submitting client (the default tenant quota)")
    with tempfile.TemporaryDirectory(prefix="cm3leon-bench-stack-") as temporary:
        workdir = Path(args.workdir or temporary)
        started = time.perf_counter()
        results = measure(args, workdir)
    report = {
        "benchmark": "stack",
        **headline(results, args.concurrency),
        "machine": machine(),
        "parameters": {**vars(args), "seconds": time.perf_counter() - started},
        **results,
    }
    write(Path(args.out), report)
    print(json.dumps({key: report[key] for key in SUMMARY_KEYS}, indent=2))
    return 0
