"""`cm3leon train ...`: training commands (each runs resumably, with a progress bar and JSON-lines metrics)."""

from __future__ import annotations

from pathlib import Path

import typer

train_app = typer.Typer(no_args_is_help=True)


@train_app.command("text-tokenizer")
def train_text_tokenizer(
    out: Path = typer.Option(..., help="Directory to write tokenizer.json into."),
    preset: str = typer.Option("shapes", help="Text tokenizer preset: tiny, shapes, paper."),
    n_scenes: int = typer.Option(5_000, help="World scenes whose text the BPE is trained on."),
    seed: int = typer.Option(0),
) -> None:
    """Train the byte-level BPE text tokenizer on the world's text."""
    from cm3leon.data.world import WorldConfig
    from cm3leon.tokenizers.text import TextTokenizerConfig
    from cm3leon.tokenizers.world_text import train_world_tokenizer

    tokenizer = train_world_tokenizer(WorldConfig.preset("shapes"), TextTokenizerConfig.preset(preset), n_scenes, seed)
    path = tokenizer.save(out)
    typer.echo(f"wrote {path} ({tokenizer.size} tokens)")
