"""The client's command line, `cm3leon-client jobs|corpus ...` (the `cm3leon` command mounts the same groups)."""

import sys
from typing import Annotated

import typer

from cm3leon_client.cli.corpus import corpus_app
from cm3leon_client.cli.errors import DEBUG_FLAG, EXIT_CODES_HELP, ExitCode, run
from cm3leon_client.cli.jobs import jobs_app

JOBS_HELP = "Submit and follow jobs on a running gateway."
CORPUS_HELP = "The retrieval memory of a running stack: add, search, delete documents."

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Client of the cm3leon gateway.", epilog=EXIT_CODES_HELP
)


def debug_option(
    debug: Annotated[bool, typer.Option(DEBUG_FLAG, help="Show the traceback of an error.")] = False,
) -> None:
    """Declares --debug for --help; `run` reads it wherever it stands on the command line."""


app.callback()(debug_option)
app.add_typer(jobs_app, name="jobs", help=JOBS_HELP)
app.add_typer(corpus_app, name="corpus", help=CORPUS_HELP)

__all__ = ["CORPUS_HELP", "JOBS_HELP", "ExitCode", "app", "corpus_app", "debug_option", "jobs_app", "main", "run"]


def main() -> None:
    sys.exit(run(app, prog_name="cm3leon-client"))
