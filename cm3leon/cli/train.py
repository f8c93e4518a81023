"""`cm3leon train ...`: training commands (each runs resumably, with a progress bar and JSON-lines metrics)."""

from __future__ import annotations

import typer

train_app = typer.Typer(no_args_is_help=True)
