"""`cm3leon demo`: what `make demo` runs."""

from __future__ import annotations

from pathlib import Path

import typer


def demo_command(out: Path = typer.Option(Path("out/demo"), help="Where to write the demo's pictures.")) -> None:
    """Render shapes-world samples and round-trip them through the shipped image tokenizer."""
    from cm3leon.demo import run_demo

    run_demo(out)
