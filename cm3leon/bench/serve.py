"""Engine-level serving benchmark: the scheduler against one job at a time, a static batch and Hugging Face.

Jobs are single-image CFG text->image requests with the checkpoint's text->image defaults, one seed each; a
job's time is its token generation (VQ decoding, identical on every side, is left out). Every ratio is measured
within one run on one machine:

- `engine_speedup_16`: 16 jobs arriving evenly over `arrival_window_s`; jobs/s (jobs / (last finish - first
  arrival)) through the scheduler's loop thread over jobs/s of `generate` one job at a time (today's worker).
- `continuous_vs_static_16`: the same 16 submitted at once from 16 threads to the running scheduler, over a
  static `generate` batch of 16 (`continuous_arrivals_vs_static_16`: with the arrival window instead).
- `hf_speedup_b1` / `hf_speedup_b16`: the weights exported to `transformers`' `OPTForCausalLM` (greedy outputs
  equal), `generate(guidance_scale=...)` of one job / a static batch of 16, against ours through the scheduler.
- A sweep over concurrency (all jobs at once): jobs/s and p50/p99 latency for ours, one at a time and HF.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from cm3leon.decoding import GenerationRequest, SamplingParams, generate, no_rerank, prompt_streams
from cm3leon.decoding.engine_core import SchedulerConfig
from cm3leon.decoding.scheduler import Scheduler
from cm3leon.model.transformer import Transformer
from cm3leon.presets import Presets
from cm3leon.tokenizers.vocab import Vocabulary

CAPTIONS = (
    "a large red circle at the top left",
    "a small blue star in the center",
    "two green squares at the bottom right and a yellow triangle",
    "a purple diamond on the left and a small orange circle at the top",
    "three small red triangles",
    "a large blue square in the center and a green star at the bottom left",
    "a yellow circle at the right",
    "a small purple star at the top right and a large orange diamond at the bottom",
)


@dataclass(frozen=True)
class ServeBenchConfig(Presets):
    """What to run; presets `standard` (bench/results/serve.json) and `quick` (tests, own checks)."""

    jobs: int = 16
    arrival_window_s: float = 1.0
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    threads: int = 1
    hf: bool = True
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    sweep_sides: tuple[str, ...] = ("ours", "one_at_a_time", "hf")
    compile_decode: bool = True
    repeats: int = 2  # headline measurements: best of this many interleaved passes

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "standard": {},
        "quick": dict(jobs=4, arrival_window_s=0.2, concurrency=(1, 4), repeats=1),
    }


@dataclass
class Run:
    """One side's jobs: when each was submitted and finished (seconds from the run's start)."""

    submitted: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)

    @property
    def jobs_per_s(self) -> float:
        return len(self.finished) / (max(self.finished) - min(self.submitted))

    def latency_ms(self, quantile: float) -> float:
        latencies = np.array(self.finished) - np.array(self.submitted)
        return float(1000 * np.quantile(latencies, quantile))

    def summary(self) -> dict[str, float]:
        return {"jobs_per_s": self.jobs_per_s, "p50_ms": self.latency_ms(0.5), "p99_ms": self.latency_ms(0.99)}


def text_to_image_jobs(params: SamplingParams, count: int, seed: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(prompt=[CAPTIONS[index % len(CAPTIONS)]], params=params.replace(seed=seed + index))
        for index in range(count)
    ]


def one_at_a_time(
    model: Transformer, vocab: Vocabulary, jobs: Sequence[GenerationRequest], arrivals: Sequence[float]
) -> Run:
    """Today's worker: `generate` of one job after the other, each starting once it has arrived."""
    run, start = Run(), time.perf_counter()
    for job, arrival in zip(jobs, arrivals, strict=True):
        _sleep_until(start + arrival)
        run.submitted.append(arrival)
        generate(model, vocab, [job], scorer=no_rerank)
        run.finished.append(time.perf_counter() - start)
    return run


def through_scheduler(scheduler: Scheduler, jobs: Sequence[GenerationRequest], arrivals: Sequence[float]) -> Run:
    """Jobs submitted at their arrival times to the scheduler's running loop; a job finishes at its last step."""
    finished = [0.0] * len(jobs)
    run, handles, start = Run(), [], time.perf_counter()

    def progress_of(index: int) -> Callable[[int, int], None]:
        def progress(done: int, total: int) -> None:
            if done == total:
                finished[index] = time.perf_counter() - start

        return progress

    for index, (job, arrival) in enumerate(zip(jobs, arrivals, strict=True)):
        _sleep_until(start + arrival)
        run.submitted.append(time.perf_counter() - start)
        handles.append(scheduler.submit(job, scorer=no_rerank, progress=progress_of(index)))
    for handle in handles:
        handle.result()
    run.finished = finished
    return run


def static_batch(work: Callable[[], object], count: int) -> Run:
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    return Run(submitted=[0.0] * count, finished=[seconds] * count)


def _sleep_until(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def evenly(count: int, window: float) -> list[float]:
    return [window * index / max(count - 1, 1) for index in range(count)]


def machine() -> dict[str, Any]:
    """CPU model and cores, or the GPU."""
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    info.update(cpu=cpu, cores=torch.multiprocessing.cpu_count())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# The headline keys `bench serve` merges into summary.json.
SUMMARY_KEYS = (
    "engine_speedup_16",
    "engine_speedup_16_burst",
    "continuous_vs_static_16",
    "hf_speedup_b1",
    "hf_speedup_b16",
    "kv_cache_bytes_per_row",
    "machine",
)


def write_serve_extras(out: Path, name: str, results: dict[str, Any]) -> list[Path]:
    """The sweep's PNG plot beside the results, and the headline keys merged into `out/summary.json`."""
    from cm3leon.bench.plot import save_sweep_plot

    plot = save_sweep_plot(out / f"{name}.png", results["sweep"], f"{name}: jobs/s and latency vs concurrency")
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update({key: results[key] for key in SUMMARY_KEYS if key in results})
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return [plot, summary_path]


def load_model(checkpoint: Path, preset: str | None, config: ServeBenchConfig) -> tuple[Transformer, Vocabulary]:
    """The checkpoint's decoder, or (`preset`) a decoder of that size with random weights and its vocabulary."""
    vocab = Vocabulary.load(checkpoint)
    if preset is None:
        model = Transformer.from_pretrained(checkpoint)
    else:
        from cm3leon.model.config import DecoderConfig

        torch.manual_seed(config.seed)
        model = Transformer(DecoderConfig.preset(preset, vocab.size, zero_init_output_projections=False))
    dtype = getattr(torch, config.dtype)
    return model.to(device=config.device, dtype=dtype).eval(), vocab


def make_scheduler(
    model: Transformer, vocab: Vocabulary, jobs: Sequence[GenerationRequest], config: ServeBenchConfig, most_jobs: int
) -> Scheduler:
    """A pool sized for `most_jobs` CFG jobs at once, rows just long enough for the longest job."""
    row_length = max(len(prompt_streams(vocab, job).full) for job in jobs) + vocab.codes_per_image + 1
    settings = SchedulerConfig(max_rows=2 * most_jobs, row_length=row_length, compile_decode=config.compile_decode)
    return Scheduler(model, vocab, settings)


def hf_side(
    model: Transformer, vocab: Vocabulary, jobs: Sequence[GenerationRequest], seed: int
) -> tuple[Any, Callable[[int], None], bool]:
    """(the exported peer, a function running a static CFG batch of the first n jobs, whether the export is proven)."""
    from cm3leon.bench.hf_peer import export_to_opt, greedy_equal, peer_cfg_generate

    peer = export_to_opt(model)
    streams = [prompt_streams(vocab, job) for job in jobs]
    proven = greedy_equal(model, peer, [s.full for s in streams[:2]], vocab.codes_per_image + 1)
    params = jobs[0].params

    def run(count: int) -> None:
        peer_cfg_generate(
            peer,
            [s.full for s in streams[:count]],
            [s.text_masked for s in streams[:count]],
            guidance_scale=params.guidance_scale,
            top_p=params.top_p,
            new_tokens=vocab.codes_per_image + 1,
            pad_id=vocab.pad_id,
            seed=seed,
        )

    return peer, run, proven


def bench_serve(checkpoint: Path, config: ServeBenchConfig, preset: str | None = None) -> dict[str, Any]:
    """Flat results (see the module docstring) plus `sweep` (per side and concurrency) and the parameters."""
    from cm3leon.decoding.defaults import TEXT_TO_IMAGE, load_decoding_defaults

    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        model, vocab = load_model(checkpoint, preset, config)
        params = load_decoding_defaults(checkpoint)[TEXT_TO_IMAGE].replace(num_candidates=1, method="cfg")
        most = max(config.jobs, *config.concurrency)
        jobs = text_to_image_jobs(params, most, config.seed)
        scheduler = make_scheduler(model, vocab, jobs, config, most)
        scheduler.start()
        try:
            return _measure(model, vocab, scheduler, jobs, params, config, checkpoint, preset)
        finally:
            scheduler.stop()
    finally:
        torch.set_num_threads(threads_before)


def _measure(
    model: Transformer,
    vocab: Vocabulary,
    scheduler: Scheduler,
    jobs: list[GenerationRequest],
    params: SamplingParams,
    config: ServeBenchConfig,
    checkpoint: Path,
    preset: str | None,
) -> dict[str, Any]:
    n = config.jobs
    generate(model, vocab, jobs[:2], scorer=no_rerank)  # warm-ups (the first also compiles the decode step)
    scheduler.run_batch(jobs[:2], scorer=no_rerank)
    arrivals = evenly(n, config.arrival_window_s)
    sides: dict[str, Callable[[], Run]] = {
        "one_at_a_time_16": lambda: one_at_a_time(model, vocab, jobs[:n], arrivals),
        "scheduler_arrivals_16": lambda: through_scheduler(scheduler, jobs[:n], arrivals),
        "scheduler_burst_16": lambda: through_scheduler(scheduler, jobs[:n], [0.0] * n),
        "generate_static_16": lambda: static_batch(lambda: generate(model, vocab, jobs[:n], scorer=no_rerank), n),
        "scheduler_static_16": lambda: static_batch(lambda: scheduler.run_batch(jobs[:n], scorer=no_rerank), n),
        "scheduler_one_job": lambda: static_batch(lambda: scheduler.run_batch(jobs[:1], scorer=no_rerank), 1),
        "generate_one_job": lambda: static_batch(lambda: generate(model, vocab, jobs[:1], scorer=no_rerank), 1),
    }
    proven, hf_run = None, None
    if config.hf:
        _, peer_run, proven = hf_side(model, vocab, jobs, config.seed)
        peer_run(1)  # warm-up
        sides["hf_one_job"] = lambda: static_batch(lambda: peer_run(1), 1)
        sides["hf_static_16"] = lambda: static_batch(lambda: peer_run(n), n)
        hf_run = peer_run
    best = best_of(sides, config.repeats)
    results: dict[str, Any] = {
        "engine_speedup_16": _ratio(best, "scheduler_arrivals_16", "one_at_a_time_16"),
        # The arrival window bounds the ratio above (jobs / (window + one job)); all 16 at once shows the engine's.
        "engine_speedup_16_burst": _ratio(best, "scheduler_burst_16", "one_at_a_time_16"),
        "continuous_vs_static_16": _ratio(best, "scheduler_burst_16", "generate_static_16"),
        "continuous_arrivals_vs_static_16": _ratio(best, "scheduler_arrivals_16", "generate_static_16"),
        "scheduler_static_vs_generate_static_16": _ratio(best, "scheduler_static_16", "generate_static_16"),
        "scheduler_one_job_vs_generate": _ratio(best, "scheduler_one_job", "generate_one_job"),
        **{side: run.summary() for side, run in best.items()},
    }
    if config.hf:
        results.update(
            hf_export_greedy_equal=proven,
            hf_speedup_b1=_ratio(best, "scheduler_one_job", "hf_one_job"),
            hf_speedup_b16=_ratio(best, "scheduler_static_16", "hf_static_16"),
        )
    results["sweep"] = _sweep(model, vocab, scheduler, jobs, config, hf_run)
    results["kv_cache_bytes_per_row"] = scheduler.stats["kv_bytes_per_row"]
    results["machine"] = machine()
    results["parameters"] = {
        **asdict(config),
        "checkpoint": str(checkpoint),
        "preset": preset,
        "sampling": asdict(params),
        "scheduler": asdict(scheduler.config),
        "model_parameters": model.num_parameters(),
        "tokens_per_job": vocab.codes_per_image + 1,
        "timed": "token generation (VQ decoding left out)",
    }
    return results


def best_of(sides: dict[str, Callable[[], Run]], repeats: int) -> dict[str, Run]:
    """Every side `repeats` times, interleaved; per side the pass with the most jobs/s (the least disturbed on a
    shared machine)."""
    runs: dict[str, list[Run]] = {side: [] for side in sides}
    for _ in range(repeats):
        for side, run in sides.items():
            runs[side].append(run())
    return {side: max(passes, key=lambda r: r.jobs_per_s) for side, passes in runs.items()}


def _ratio(best: dict[str, Run], ours: str, theirs: str) -> float:
    return best[ours].jobs_per_s / best[theirs].jobs_per_s


def _sweep(
    model: Transformer,
    vocab: Vocabulary,
    scheduler: Scheduler,
    jobs: list[GenerationRequest],
    config: ServeBenchConfig,
    hf_run: Callable[[int], None] | None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per side, per concurrency c: c jobs submitted at once (best of `repeats` interleaved passes)."""
    makers: dict[str, Callable[[int], Run]] = {
        "ours": lambda c: through_scheduler(scheduler, jobs[:c], [0.0] * c),
        "one_at_a_time": lambda c: one_at_a_time(model, vocab, jobs[:c], [0.0] * c),
    }
    if hf_run is not None:
        makers["hf"] = lambda c: static_batch(lambda: hf_run(c), c)
    makers = {side: make for side, make in makers.items() if side in config.sweep_sides}
    sweep: dict[str, dict[str, dict[str, float]]] = {side: {} for side in makers}
    for c in config.concurrency:
        best = best_of({side: partial(make, c) for side, make in makers.items()}, config.repeats)
        for side, run in best.items():
            sweep[side][str(c)] = run.summary()
    return sweep
