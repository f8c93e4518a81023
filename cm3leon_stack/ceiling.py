"""The decoder's own ceiling for the stack benchmark's jobs: the same text->image requests straight into one engine
loaded as a worker loads it (its settings, retrieval on, its torch threads), one at a time and then from as many
threads as the stack has clients. No gateway, broker or object store: what the stack cannot exceed.

The scheduler's work counters split each run into prefill (every job's own: its prompt, with the retrieved
documents, is computed row by row) and decode steps (shared by the jobs running together), which is what says how
much batching can gain. Run by `cm3leon bench stack` in a process of its own (so the worker it starts later can
open the same local retrieval memory); prints one JSON object.

    python -m cm3leon_stack.ceiling --model models/shapes --retriever models/shapes/retriever --memory-path out/qdrant
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.convert import request_to_domain
from services.load import numbered_job
from services.settings import WorkerSettings
from worker.runtime import engine_config, open_memory


def timed(run: Callable[[], None], work: Callable[[], Any]) -> dict[str, float]:
    """Wall time of `run` and the scheduler work it did."""
    before, started = work(), time.perf_counter()
    run()
    wall, after = time.perf_counter() - started, work()
    return {
        "wall_s": wall,
        "prefill_s": after.prefill_s - before.prefill_s,
        "prefill_token_rows": after.prefill_token_rows - before.prefill_token_rows,
        "decode_s": after.decode_s - before.decode_s,
        "decode_steps": after.decode_steps - before.decode_steps,
        "decode_rows": after.decode_rows - before.decode_rows,
    }


def per_job(measured: dict[str, float], jobs: int) -> dict[str, float]:
    """Jobs/s, the prefill share of the engine's forward time, and the work per job and per step."""
    forward_s = measured["prefill_s"] + measured["decode_s"]
    return {
        "jobs": jobs,
        "jobs_per_s": jobs / measured["wall_s"],
        "prefill_share_of_forward": measured["prefill_s"] / forward_s,
        "forward_share_of_wall": forward_s / measured["wall_s"],
        "prefill_token_rows_per_job": measured["prefill_token_rows"] / jobs,
        "decode_rows_per_step": measured["decode_rows"] / max(1, measured["decode_steps"]),
        "decode_ms_per_step": 1000 * measured["decode_s"] / max(1, measured["decode_steps"]),
        **measured,
    }


def measure(settings: WorkerSettings, sequential: int, concurrency: int, rounds: int) -> dict[str, Any]:
    import torch

    from cm3leon.inference.engine import Engine

    if settings.threads:
        torch.set_num_threads(settings.threads)
    memory, retriever = open_memory(settings)
    engine = Engine.load(settings.model_dir, engine_config(settings), memory=memory, retriever=retriever)
    engine.warm_up()

    def job(index: int) -> None:
        engine.run(request_to_domain(numbered_job(index)))

    def work() -> Any:
        return engine.bundle.decoder.work

    alone = timed(lambda: [job(index) for index in range(sequential)], work)

    def together() -> None:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(job, range(sequential, sequential + concurrency * rounds)))

    shared = timed(together, work)
    one, many = per_job(alone, sequential), per_job(shared, concurrency * rounds)
    return {
        "torch_threads": torch.get_num_threads(),
        "sequential": one,
        "concurrent": {"threads": concurrency, **many},
        "engine_speedup": many["jobs_per_s"] / one["jobs_per_s"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cm3leon_stack.ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--retriever", required=True)
    parser.add_argument("--memory-path", required=True)
    parser.add_argument("--memory", default="shapes")
    parser.add_argument("--sequential", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    settings = WorkerSettings(
        model_dir=args.model, retriever_dir=args.retriever, memory_path=args.memory_path, memory_name=args.memory
    )
    print(json.dumps(measure(settings, args.sequential, args.concurrency, args.rounds)))


if __name__ == "__main__":
    main()
