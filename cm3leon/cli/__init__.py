"""The `cm3leon` command line: one entry point, a group of subcommands per area.

Each group lives in its own module and imports heavy libraries (torch) inside its commands, so that
`cm3leon --help` stays instant.
"""

from __future__ import annotations

import typer

from cm3leon.cli.bench import bench_app
from cm3leon.cli.corpus import corpus_app
from cm3leon.cli.data import data_app
from cm3leon.cli.demo import demo_command
from cm3leon.cli.evaluate import eval_app
from cm3leon.cli.jobs import jobs_app
from cm3leon.cli.stack import stack_app
from cm3leon.cli.train import train_app

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="CM3Leon-style multimodal model on the shapes world."
)
app.add_typer(data_app, name="data", help="Generate and inspect shapes-world data.")
app.add_typer(train_app, name="train", help="Train tokenizers and models.")
app.add_typer(eval_app, name="eval", help="Evaluate; every suite writes --json FILE and prints a table.")
app.add_typer(bench_app, name="bench", help="Benchmarks writing JSON under bench/results/.")
app.add_typer(corpus_app, name="corpus", help="Build the retrieval memory (Qdrant) from world documents.")
app.add_typer(jobs_app, name="jobs", help="Submit and follow jobs on a running gateway.")
app.add_typer(stack_app, name="stack", help="The embedded serving stack: up, demo.")
app.command("demo")(demo_command)


def main() -> None:
    app()
