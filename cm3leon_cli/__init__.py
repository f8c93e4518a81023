"""The `cm3leon` command: composes the model core's commands (`cm3leon.cli`), the client's `jobs` / `corpus`
(`cm3leon_client.cli`) and the embedded stack's `stack` (`cm3leon_stack.cli`).

Nothing imports this package; it exists so that the core need not import the client or the services to offer
one command line. Errors are reported politely (`cm3leon_client.cli.errors.run`).
"""

import sys

import typer

from cm3leon.cli import CORPUS_HELP, GROUPS, demo_command
from cm3leon.cli.corpus import corpus_app as core_corpus_app
from cm3leon_client.cli import JOBS_HELP, debug_option, jobs_app
from cm3leon_client.cli import corpus_app as client_corpus_app
from cm3leon_client.cli.errors import EXIT_CODES_HELP, run
from cm3leon_stack.cli import stack_app

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="CM3Leon-style multimodal model on the shapes world.",
    epilog=EXIT_CODES_HELP,
)
app.callback()(debug_option)
corpus_app = typer.Typer(no_args_is_help=True)
corpus_app.registered_commands.extend([*core_corpus_app.registered_commands, *client_corpus_app.registered_commands])
for group, name, help_text in GROUPS:
    if name != "corpus":
        app.add_typer(group, name=name, help=help_text)
app.add_typer(corpus_app, name="corpus", help=CORPUS_HELP)
app.add_typer(jobs_app, name="jobs", help=JOBS_HELP)
app.add_typer(stack_app, name="stack", help="The embedded serving stack: up, demo.")
app.command("demo")(demo_command)
bench_group = next(group for group, name, _ in GROUPS if name == "bench")
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@bench_group.command("chaos", context_settings=PASS_THROUGH)
def bench_chaos(ctx: typer.Context) -> None:
    """The chaos soak (services.chaos): jobs through the embedded stack while workers, Redis and S3 fail ->
    bench/results/chaos.json. Options: `cm3leon bench chaos --help`."""
    from services.chaos import main as chaos_main  # the stack's processes: loaded only when asked for

    raise typer.Exit(chaos_main(ctx.args))


@bench_group.command("fuzz", context_settings=PASS_THROUGH)
def bench_fuzz(ctx: typer.Context) -> None:
    """Fuzz both services (services.fuzz): generated requests against a real gateway -> bench/results/fuzz.json.
    Options: `cm3leon bench fuzz --help`."""
    from services.fuzz import main as fuzz_main  # a stack's processes: loaded only when asked for

    raise typer.Exit(fuzz_main(ctx.args))


@bench_group.command("stack", context_settings=PASS_THROUGH)
def bench_stack(ctx: typer.Context) -> None:
    """The serving stack as a user sees it (cm3leon_stack.bench): jobs/s and latency at 1 and 16 clients, the
    system's own cost per job, SubmitJob/s, a worker's peak memory -> bench/results/stack.json. Options:
    `cm3leon bench stack --help`."""
    from cm3leon_stack.bench import main as stack_main  # the stack's processes: loaded only when asked for

    raise typer.Exit(stack_main(ctx.args))


def main() -> None:
    sys.exit(run(app, prog_name="cm3leon"))
