"""`cm3leon bench ...`: speed and memory benchmarks; results go to JSON under bench/results/."""

from __future__ import annotations

import typer

bench_app = typer.Typer(no_args_is_help=True)
