"""`jobs ...`: the gateway's jobs on the command line (submit one subcommand per kind, get, watch, cancel, list).

    cm3leon jobs submit text-to-image "a large red circle at the top left" --seed 1 --wait --out out/jobs
    cm3leon jobs submit caption picture.png --style short --wait --json
    cm3leon jobs submit grounded-generation "small red circle@0,0,0.33,0.33" --prompt "on a black background"
    cm3leon jobs watch JOB_ID ; cm3leon jobs list --state succeeded

The gateway and key come from --target / --api-key or CM3LEON_TARGET / CM3LEON_API_KEY.
"""

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToJson

from cm3leon_client.api import jobs_pb2
from cm3leon_client.channel import Connection
from cm3leon_client.cli.errors import EXIT_CODES_HELP, ExitCode
from cm3leon_client.cli.kinds import ALIASES, command_name, kind_fields, kind_help, request_builder
from cm3leon_client.cli.options import with_connection, with_parameters
from cm3leon_client.client import Client, download_outputs

jobs_app = typer.Typer(no_args_is_help=True, epilog=EXIT_CODES_HELP)
submit_app = typer.Typer(no_args_is_help=True, epilog=EXIT_CODES_HELP)
jobs_app.add_typer(
    submit_app, name="submit", help="Submit a job: one subcommand per kind, each with only its own options."
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the job as JSON (for scripts).")]
STATE_NAMES = [name.removeprefix("JOB_STATE_").lower() for name in jobs_pb2.JobState.keys()[1:]]


def state_name(job: jobs_pb2.Job) -> str:
    return jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")


def print_json(job: jobs_pb2.Job) -> None:
    typer.echo(MessageToJson(job, indent=2))


def show_progress(job: jobs_pb2.Job) -> None:
    """One status line on stderr, rewritten in place (only on a terminal)."""
    if sys.stderr.isatty():
        done, total = job.progress.tokens_done, job.progress.tokens_total
        typer.echo(f"\r{state_name(job).lower():<10} {done}/{total} tokens", nl=False, err=True)


def report(job: jobs_pb2.Job, out: Path | None, as_json: bool) -> None:
    """The finished job: its state, error, text and where its outputs went (or the job as JSON)."""
    written = download_outputs(job, out) if out is not None else []
    if as_json:
        print_json(job)
        return
    if sys.stderr.isatty():
        typer.echo("", err=True)
    typer.echo(f"job {job.job_id} {state_name(job)}")
    if job.error.code:
        typer.echo(f"error {job.error.code}: {job.error.message}")
    if job.result.text:
        typer.echo(f"text: {job.result.text}")
    for path in written:
        typer.echo(f"wrote {path}")


def submit_and_report(
    connection: Connection, request: jobs_pb2.JobRequest, wait: bool, out: Path | None, as_json: bool, request_id: str
) -> None:
    with Client(connection=connection) as client:
        job = client.submit(request, request_id=request_id)
        if not wait:
            if as_json:
                print_json(job)
            else:
                typer.echo(f"job {job.job_id} {state_name(job)} (queue position {job.queue_position})")
            return
        job = client.wait(job.job_id, on_update=None if as_json else show_progress)
    report(job, out, as_json)
    if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        raise typer.Exit(ExitCode.JOB_FAILED)


def submit_options() -> list[inspect.Parameter]:
    def keyword(name: str, annotation: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    return [
        keyword("wait", Annotated[bool, typer.Option("--wait", help="Follow the job until it finishes.")], False),
        keyword("out", Annotated[Path | None, typer.Option(help="With --wait: save outputs + job JSON here.")], None),
        keyword("as_json", JsonOption, False),
        keyword(
            "request_id",
            Annotated[str, typer.Option(help="Idempotency key: a retry returns the same job (default: a new one).")],
            "",
        ),
    ]


def kind_command(kind: FieldDescriptor) -> Callable[..., None]:
    """The `submit KIND` command: the kind's own parameters, the submit options, the connection options."""
    parameters, build = request_builder(kind)

    def command(connection: Connection, **values: Any) -> None:
        wait, out, as_json, request_id = (values.pop(k) for k in ("wait", "out", "as_json", "request_id"))
        submit_and_report(connection, build(values), wait, out, as_json, request_id)

    command.__name__ = kind.name
    command.__doc__ = kind_help(kind)
    return with_connection(with_parameters(command, [*parameters, *submit_options()]))


def register_kinds(app: typer.Typer) -> None:
    for kind in kind_fields():
        command = kind_command(kind)
        app.command(command_name(kind), help=kind_help(kind))(command)
        if kind.name in ALIASES:
            app.command(ALIASES[kind.name], hidden=True)(command)


register_kinds(submit_app)


@jobs_app.command("get")
@with_connection
def get(job_id: str, connection: Connection, as_json: JsonOption = False) -> None:
    """Print the job (one line, or all of it as JSON)."""
    with Client(connection=connection) as client:
        job = client.get(job_id)
    if as_json:
        print_json(job)
    else:
        typer.echo(f"{job.job_id}  {state_name(job)}  {job.kind}  {job.result.text}".rstrip())


@jobs_app.command("watch")
@with_connection
def watch(
    job_id: str,
    connection: Connection,
    after: Annotated[int, typer.Option(help="Resume after this sequence number.")] = 0,
) -> None:
    """Print one line per snapshot until the job finishes (exit 1 unless it succeeded); a broken stream is
    resumed after the last snapshot printed."""

    def print_line(job: jobs_pb2.Job) -> None:
        preview = f" preview={job.preview.url}" if job.preview.key else ""
        progress = f"{job.progress.tokens_done}/{job.progress.tokens_total}"
        typer.echo(f"#{job.sequence} {state_name(job)} {progress}{preview}")

    with Client(connection=connection) as client:
        final = client.wait(job_id, on_update=print_line, after_sequence=after)
    if final.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        raise typer.Exit(ExitCode.JOB_FAILED)


@jobs_app.command("cancel")
@with_connection
def cancel(job_id: str, connection: Connection) -> None:
    """Cancel a queued or running job."""
    with Client(connection=connection) as client:
        job = client.cancel(job_id)
    typer.echo(f"job {job.job_id} {state_name(job)}")


@jobs_app.command("list")
@with_connection
def list_jobs(
    connection: Connection,
    state: Annotated[list[str] | None, typer.Option(help=f"Only these states: {', '.join(STATE_NAMES)}.")] = None,
    page_size: Annotated[int, typer.Option()] = 20,
    page_token: Annotated[str, typer.Option()] = "",
) -> None:
    """One line per job, newest first; prints the next page's token when there is one."""
    unknown = [s for s in state or [] if s.lower() not in STATE_NAMES]
    if unknown:
        raise typer.BadParameter(f"unknown state {unknown[0]!r}; choose from {', '.join(STATE_NAMES)}")
    states = [jobs_pb2.JobState.Value(f"JOB_STATE_{s.upper()}") for s in state or []]
    with Client(connection=connection) as client:
        page = client.list(states, page_size, page_token)
    for job in page.jobs:
        created = job.created_at.ToDatetime()
        typer.echo(f"{job.job_id}  {state_name(job):<9}  {job.kind:<19}  {created:%Y-%m-%d %H:%M:%S}")
    if page.next_page_token:
        typer.echo(f"next page: --page-token {page.next_page_token}")
