"""The model core's command line: data, train, eval, bench, corpus build, demo.

Each group lives in its own module and imports heavy libraries (torch) inside its commands, so that
`cm3leon --help` stays instant. The `cm3leon` entry point (`cm3leon_cli`) mounts these groups together with the
client's `jobs` / `corpus` commands and the embedded stack's `stack` commands; the core imports neither.
"""

from __future__ import annotations

import typer

from cm3leon.cli.bench import bench_app
from cm3leon.cli.corpus import corpus_app
from cm3leon.cli.data import data_app
from cm3leon.cli.demo import demo_command
from cm3leon.cli.evaluate import eval_app
from cm3leon.cli.train import train_app

CORPUS_HELP = "The retrieval memory (Qdrant): build it from world documents; add, search, delete through a gateway."

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="CM3Leon-style multimodal model on the shapes world."
)
# (group, name, help): the core's command groups; `cm3leon_cli` mounts them beside the client's and the stack's.
GROUPS: list[tuple[typer.Typer, str, str]] = [
    (data_app, "data", "Generate and inspect shapes-world data."),
    (train_app, "train", "Train tokenizers and models."),
    (eval_app, "eval", "Evaluate; every suite writes --json FILE and prints a table."),
    (bench_app, "bench", "Benchmarks writing JSON under bench/results/."),
    (corpus_app, "corpus", CORPUS_HELP),
]
for group, name, help_text in GROUPS:
    app.add_typer(group, name=name, help=help_text)
app.command("demo")(demo_command)


def main() -> None:
    app()
