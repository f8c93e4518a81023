"""The options every gateway command takes (target, key, TLS, deadline), declared once and added to each command
by `with_connection`, which hands the command one `Connection`."""

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from cm3leon_client.channel import DEFAULT_TARGET, Connection
from cm3leon_client.cli.errors import remember_target

CONNECTION_PANEL = "Connection"


def option(annotation: Any, default: Any, envvar: str | None, help_text: str) -> tuple[Any, Any]:
    info = typer.Option(envvar=envvar, help=help_text, rich_help_panel=CONNECTION_PANEL)
    return Annotated[annotation, info], default


CONNECTION_OPTIONS: dict[str, tuple[Any, Any]] = {
    "target": option(str, DEFAULT_TARGET, "CM3LEON_TARGET", "Gateway host:port."),
    "api_key": option(str, "", "CM3LEON_API_KEY", "API key (`cm3leon stack up` prints one)."),
    "timeout": option(float, 30.0, "CM3LEON_TIMEOUT", "Deadline of each call, in seconds."),
    "tls": option(bool, False, "CM3LEON_TLS", "TLS with the system's root certificates."),
    "ca_file": option(Path | None, None, "CM3LEON_CA_FILE", "TLS: the CA certificate (PEM) to trust."),
    "cert_file": option(Path | None, None, "CM3LEON_CERT_FILE", "Mutual TLS: this client's certificate (PEM)."),
    "key_file": option(Path | None, None, "CM3LEON_KEY_FILE", "Mutual TLS: this client's private key (PEM)."),
}
CONNECTION_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
    for name, (annotation, default) in CONNECTION_OPTIONS.items()
]


def connection_from(values: dict[str, Any]) -> Connection:
    """The Connection of the parsed options (popped from `values`); remembered for error messages."""
    options = {name: values.pop(name) for name in CONNECTION_OPTIONS}
    remember_target(options["target"])
    return Connection(
        target=options["target"],
        api_key=options["api_key"],
        timeout_s=options["timeout"],
        tls=options["tls"],
        ca_file=options["ca_file"],
        cert_file=options["cert_file"],
        key_file=options["key_file"],
    )


def with_parameters(function: Callable[..., Any], parameters: list[inspect.Parameter]) -> Callable[..., Any]:
    """`function` as typer sees it: a signature of `parameters` (typer reads options from signatures)."""
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    function.__annotations__ = {p.name: p.annotation for p in parameters}
    return function


def with_connection(command: Callable[..., Any]) -> Callable[..., Any]:
    """The command with the connection options added; it receives them as `connection: Connection`."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "connection"]

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        return command(connection=connection_from(values), **values)

    del wrapper.__wrapped__  # typer must see the new signature, not the command's
    return with_parameters(wrapper, [*own, *CONNECTION_PARAMETERS])
