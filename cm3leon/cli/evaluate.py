"""`cm3leon eval SUITE --json FILE`: every suite writes a JSON object of metrics and prints a short table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

eval_app = typer.Typer(no_args_is_help=True)


@eval_app.command("oracle")
def eval_oracle(
    n: Annotated[int, typer.Option(help="Test shapes scenes (and as many text scenes).")] = 1000,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics as one JSON object here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the test scenes and of the noise.")] = 0,
    world: Annotated[str, typer.Option(help="World preset: shapes or shapes32.")] = "shapes",
    degradation: Annotated[str, typer.Option(help="Degradation strengths: standard or harsh.")] = "standard",
) -> None:
    """How often the oracle recovers the exact scene from clean and degraded renders of test scenes."""
    from cm3leon.data.world import WorldConfig
    from cm3leon.evaluation.oracle_eval import DegradationConfig, evaluate_oracle
    from cm3leon.evaluation.report import write_report

    metrics = evaluate_oracle(n, seed, WorldConfig.preset(world), DegradationConfig.preset(degradation))
    write_report(f"oracle accuracy ({degradation} degradations)", metrics, json_path)
