"""`cm3leon bench ...`: speed and memory benchmarks; results go to JSON under bench/results/."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(no_args_is_help=True)

DEFAULT_MODEL_DIR = Path("models/shapes")


def _write(out: Path, name: str, results: dict[str, object]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "machine": {"processor": platform.processor(), "python": platform.python_version()}}
    record.update(results)
    path = out / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    for key, value in results.items():
        typer.echo(f"{key:<32} {value:.1f}" if isinstance(value, float) else f"{key:<32} {value}")
    typer.echo(f"wrote {path}")


@bench_app.command("foundation")
def foundation(
    out: Path = typer.Option(Path("bench/results")),
    model_dir: Path = typer.Option(DEFAULT_MODEL_DIR, help="Checkpoint directory with tokenizer.json and vq/."),
) -> None:
    """World rendering, oracle, text and VQ tokenizer throughput."""
    from cm3leon.bench.foundation import bench_foundation

    _write(out, "foundation", bench_foundation(model_dir))


@bench_app.command("decode")
def decode(
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("bench/results"),
    checkpoint: Annotated[Path, typer.Option(help="Complete model directory (decoder, vq/).")] = DEFAULT_MODEL_DIR,
    preset: Annotated[str, typer.Option(help="standard (cfg batch 1/8/32, 1 and 2 threads) or quick.")] = "standard",
) -> None:
    """Decoding speed: CFG images at batch 1, 8, 32, pooled-8 at batch 1, caption tokens/s, segmentation maps
    (greedy, caption-checked), edits and rendered words (one sample; several, chosen by the caption check and by
    the checkpoint's retriever/ when it has one), at 1 and 2 threads."""
    from cm3leon.bench.decode import DecodeBenchConfig, bench_decode

    _write(out, "decode", bench_decode(checkpoint, DecodeBenchConfig.preset(preset)))


@bench_app.command("serve")
def serve(
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("bench/results"),
    checkpoint: Annotated[Path, typer.Option(help="Model directory (decoder, tokenizer).")] = DEFAULT_MODEL_DIR,
    preset: Annotated[str, typer.Option(help="standard (16 jobs, concurrency 1/4/16/64) or quick.")] = "standard",
    model_preset: Annotated[
        str | None, typer.Option(help="Time a decoder of this size with random weights (e.g. 350m) instead.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
    threads: Annotated[int, typer.Option(help="torch intra-op threads.")] = 1,
    hf: Annotated[bool, typer.Option(help="Also time the Hugging Face transformers peer.")] = True,
    name: Annotated[str, typer.Option(help="Results file name (without .json).")] = "serve",
    compile_decode: Annotated[bool, typer.Option(help="torch.compile the scheduler's decode step.")] = True,
) -> None:
    """Continuous batching: 16 CFG text->image jobs through the scheduler against one at a time, a static batch
    and Hugging Face generate; writes serve.json, a PNG sweep plot, and merges the headline keys into
    summary.json."""
    from cm3leon.bench.serve import ServeBenchConfig, bench_serve, write_serve_extras

    config = ServeBenchConfig.preset(
        preset, device=device, dtype=dtype, threads=threads, hf=hf, compile_decode=compile_decode
    )
    results = bench_serve(checkpoint, config, model_preset)
    _write(out, name, results)
    for path in write_serve_extras(out, name, results):
        typer.echo(f"wrote {path}")


@bench_app.command("all")
def run_all(
    out: Path = typer.Option(Path("bench/results")),
    model_dir: Path = typer.Option(DEFAULT_MODEL_DIR),
) -> None:
    """Every benchmark, one JSON file each."""
    foundation(out=out, model_dir=model_dir)
    if (model_dir / "model_config.json").exists():
        decode(out=out, checkpoint=model_dir, preset="standard")
        serve(out=out, checkpoint=model_dir, preset="standard", hf=_has_transformers())
    else:
        typer.echo(f"decode, serve: skipped, no decoder checkpoint in {model_dir}")


def _has_transformers() -> bool:
    """The serve benchmark's Hugging Face peer needs `transformers` (the dev extra)."""
    import importlib.util

    return importlib.util.find_spec("transformers") is not None
