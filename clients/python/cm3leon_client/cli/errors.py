"""Run a typer app so that it fails politely: every user error is one line saying what happened and what to do,
with an exit code from `ExitCode`; a traceback only with `--debug`.

Why: a person who mistyped a path or forgot to start the gateway needs the fix, not 60 lines of stack.
"""

from __future__ import annotations

import sys
from enum import IntEnum

import grpc
import typer

DEBUG_FLAG = "--debug"
# The command-line parser's usage error (click's, which newer typer releases vendor): option, argument, missing.
UsageFailure: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class ExitCode(IntEnum):
    SUCCEEDED = 0
    JOB_FAILED = 1  # the job failed or was cancelled (or the command failed for a reason of its own)
    USAGE = 2  # a bad option, argument, path or id: fix the command line
    UNREACHABLE = 3  # cannot reach the gateway, or it does not allow us (key, permission, overload)


EXIT_CODES_HELP = (
    "Exit codes: 0 succeeded; 1 the job failed or was cancelled; 2 usage error (option, argument, path, unknown "
    f"job); 3 cannot reach the gateway or not allowed (API key, quota). {DEBUG_FLAG} shows the traceback of an error."
)
# Where the user's gateway is, for messages; set by the commands that connect (`remember_target`).
_target: list[str] = []

STATUS_EXIT: dict[grpc.StatusCode, ExitCode] = {
    grpc.StatusCode.UNAVAILABLE: ExitCode.UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNREACHABLE,
    grpc.StatusCode.UNAUTHENTICATED: ExitCode.UNREACHABLE,
    grpc.StatusCode.PERMISSION_DENIED: ExitCode.UNREACHABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ExitCode.UNREACHABLE,
    grpc.StatusCode.INVALID_ARGUMENT: ExitCode.USAGE,
    grpc.StatusCode.NOT_FOUND: ExitCode.USAGE,
    grpc.StatusCode.ALREADY_EXISTS: ExitCode.USAGE,
    grpc.StatusCode.OUT_OF_RANGE: ExitCode.USAGE,
    grpc.StatusCode.FAILED_PRECONDITION: ExitCode.USAGE,
    grpc.StatusCode.UNIMPLEMENTED: ExitCode.USAGE,
}


def remember_target(target: str) -> None:
    _target[:] = [target]


def gateway() -> str:
    return f"the gateway at {_target[0]}" if _target else "the gateway"


# Per status code: what went wrong and what to do; `{gateway}` and `{details}` are filled in.
ADVICE: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: (
        "cannot reach {gateway} ({details}); start it (`cm3leon stack up`) or point --target / CM3LEON_TARGET at a "
        "running one"
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        "no answer from {gateway} in time; check that it is up (`cm3leon stack up`), or raise --timeout"
    ),
    grpc.StatusCode.UNAUTHENTICATED: (
        "{gateway} refused the API key ({details}); pass --api-key or set CM3LEON_API_KEY to a key it knows"
    ),
    grpc.StatusCode.PERMISSION_DENIED: "not allowed: {details}; use a key whose tenant may do this",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "{gateway} is full ({details}); retry later",
    grpc.StatusCode.NOT_FOUND: "not found: {details}; check the id (`cm3leon jobs list` shows your jobs)",
    grpc.StatusCode.UNIMPLEMENTED: "not served: {details}; no worker's model runs this kind yet",
    **dict.fromkeys(
        (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ALREADY_EXISTS),
        "the gateway rejected the request: {details}; fix that option and retry",
    ),
}


def rpc_advice(code: grpc.StatusCode, details: str) -> str:
    """One line for a failed call: what the gateway said, and what to do about it."""
    template = ADVICE.get(code, f"the call failed ({code.name}): {{details}}")
    return template.format(gateway=gateway(), details=details)


def describe(error: BaseException) -> tuple[str, ExitCode] | None:
    """The one-line message and exit code of a user error; None for anything else (a bug: traceback)."""
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
        return rpc_advice(code, details), STATUS_EXIT.get(code, ExitCode.JOB_FAILED)
    if isinstance(error, FileNotFoundError):
        return f"no such file or directory: {error.filename}; check the path", ExitCode.USAGE
    if isinstance(error, IsADirectoryError | NotADirectoryError):
        return f"wrong kind of path: {error.filename} ({error.strerror}); check the path", ExitCode.USAGE
    if isinstance(error, PermissionError):
        return f"cannot open {error.filename}: permission denied", ExitCode.USAGE
    if isinstance(error, ValueError) and type(error).__module__ == "builtins":
        return f"invalid value: {error}", ExitCode.USAGE
    return None


def usage_line(error: Exception) -> str:
    context = getattr(error, "ctx", None)
    hint = f" (see `{context.command_path} --help`)" if context is not None else ""
    return f"error: {error.format_message()}{hint}"  # type: ignore[attr-defined]


def run(app: typer.Typer, argv: list[str] | None = None, prog_name: str | None = None) -> int:
    """Run `app` on `argv` (default: sys.argv[1:]); returns the exit code instead of printing a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    args = [a for a in args if a != DEBUG_FLAG]
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
        return int(result) if isinstance(result, int) else ExitCode.SUCCEEDED
    except typer.Exit as exit_:
        return int(exit_.exit_code)
    except UsageFailure as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # a bare group: its help
            typer.echo(error.format_message())  # type: ignore[attr-defined]
            return ExitCode.USAGE
        if debug:
            raise
        typer.echo(usage_line(error), err=True)
        return int(getattr(error, "exit_code", ExitCode.USAGE))
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    except Exception as error:
        if debug:
            raise
        known = describe(error)
        if known is None:
            name = f"{type(error).__name__}: {error}"
            typer.echo(f"internal error: {name} (rerun with {DEBUG_FLAG} for the traceback)", err=True)
            return ExitCode.JOB_FAILED
        message, code = known
        typer.echo(f"error: {message}", err=True)
        return code
