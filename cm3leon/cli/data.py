"""`cm3leon data ...`: look at the shapes world."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(no_args_is_help=True)


@data_app.command("sample")
def sample(
    n: int = typer.Option(16, help="Number of scenes."),
    out: Path = typer.Option(Path("out/samples.png"), help="Grid PNG to write."),
    split: str = typer.Option("train", help="train, val, test or test_compositional."),
    seed: int = typer.Option(0),
    text_fraction: float = typer.Option(0.125, help="Fraction of text-rendering scenes."),
) -> None:
    """Draw a labelled grid of scenes: image, segmentation and caption."""
    from cm3leon.data.samples import sample_grid

    sample_grid(n=n, out=out, split=split, seed=seed, text_fraction=text_fraction)
    typer.echo(f"wrote {out}")
