"""`cm3leon eval SUITE --json FILE`: every suite writes a JSON object of metrics and prints a short table."""

from __future__ import annotations

import typer

eval_app = typer.Typer(no_args_is_help=True)
