"""`cm3leon stack ...`: the embedded serving stack on this machine (see services/stack.py).

cm3leon stack up --model DIR       # Redis, S3 (weed mini), Qdrant local mode, a worker, the gateway; Ctrl-C
cm3leon stack demo --model DIR     # start it, one job of every kind the model supports, grid -> out/demo/

Every CM3LEON_* setting of the environment reaches the stack's processes (keys, limits, namespace), except where
the stack itself decides: the addresses of its own Redis and S3, and what the options below set.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from cm3leon_stack.launch import (
    StackKeys,
    check_model,
    check_settings,
    ensure_memory,
    new_stack,
    serve_tls,
    start_stack,
)

stack_app = typer.Typer(no_args_is_help=True)

DEFAULT_MODEL = Path("models/shapes")
DEFAULT_RETRIEVER = Path("models/shapes/retriever")
DEFAULT_MEMORY_PATH = Path("out/qdrant")
DEFAULT_MEMORY = "shapes"
# World documents put in the memory when it is missing: enough for k = 2 neighbours to be relevant, built in
# well under a minute on a CPU core.
DEFAULT_MEMORY_DOCS = 2000

Model = Annotated[Path, typer.Option(envvar="CM3LEON_MODEL_DIR", help="Model directory (decoder, vocabulary, vq/).")]
Retriever = Annotated[
    Path, typer.Option(envvar="CM3LEON_RETRIEVER_DIR", help="Retriever directory (retrieval off when missing).")
]
MemoryPath = Annotated[
    Path, typer.Option(envvar="CM3LEON_MEMORY_PATH", help="Qdrant local-mode directory of the retrieval memory.")
]
MemoryName = Annotated[str, typer.Option(envvar="CM3LEON_MEMORY_NAME", help="Memory (collection) name.")]
MemoryDocs = Annotated[int, typer.Option(help="World documents to build the memory with when it is empty.")]


def announce(target: str, keys: StackKeys, redis_url: str, s3_port: int, workdir: Path, ca: Path | None) -> None:
    typer.echo(f"gateway   {target}   (grpcurl {f'-cacert {ca}' if ca else '-plaintext'} {target} list)")
    for line in keys.describe(target):
        typer.echo(line)
    if ca is not None:
        typer.echo(f"TLS CA    {ca}   (a throwaway CA made for this session)")
        typer.echo(f"client:   export CM3LEON_CA_FILE={ca}")
    typer.echo(f"redis     {redis_url}")
    typer.echo(f"s3        http://127.0.0.1:{s3_port}   logs in {workdir}/")
    typer.echo("try:      cm3leon jobs submit text-to-image 'a large red circle' --wait --out out/jobs")
    typer.echo("Ctrl-C stops everything")


@stack_app.command("up")
def up(
    model: Model = DEFAULT_MODEL,
    retriever: Retriever = DEFAULT_RETRIEVER,
    memory_path: MemoryPath = DEFAULT_MEMORY_PATH,
    memory: MemoryName = DEFAULT_MEMORY,
    memory_docs: MemoryDocs = DEFAULT_MEMORY_DOCS,
    port: Annotated[int, typer.Option(envvar="CM3LEON_PORT", help="Gateway port (0: a free one).")] = 0,
    workdir: Annotated[Path, typer.Option(help="Logs and data of the stack's processes.")] = Path("out/stack"),
    tls: Annotated[bool, typer.Option("--tls", help="Serve TLS with a throwaway CA (its path is printed).")] = False,
) -> None:
    """Start the stack on 127.0.0.1 and keep it up until Ctrl-C (every process is stopped and waited for); a
    process that exits is started again, as docker compose's `restart: unless-stopped` does.

    API keys: CM3LEON_API_KEYS (JSON key -> tenant) when set, else a random key made for this session (printed)."""
    check_settings()
    check_model(model)
    ensure_memory(retriever, model / "vq", memory_path, memory, memory_docs)
    keys = StackKeys.from_environment()
    stack = new_stack(workdir, keys)
    ca = serve_tls(stack, workdir / "tls") if tls else None
    # Ctrl-C and SIGTERM alike stop the stack (SIGINT is re-armed: a background shell job starts with it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        start_stack(stack, model, retriever, memory_path, memory, port)
        announce(f"127.0.0.1:{stack.gateway_port}", keys, stack.redis_url, stack.s3_port, workdir, ca)
        while True:
            time.sleep(1)
            for child in stack.revive_exited():
                typer.echo(f"{child.name} exited ({child.exit_code}); started again (log: {child.log_path})")
    except KeyboardInterrupt:
        typer.echo("stopping ...")
    finally:
        stack.stop()
        typer.echo("stopped")


@stack_app.command("demo")
def demo(
    model: Model = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option(help="Outputs and the grid PNG.")] = Path("out/demo"),
    retriever: Retriever = DEFAULT_RETRIEVER,
    memory_path: MemoryPath = DEFAULT_MEMORY_PATH,
    memory: MemoryName = DEFAULT_MEMORY,
    memory_docs: MemoryDocs = DEFAULT_MEMORY_DOCS,
) -> None:
    """Start the stack, run one job of every kind the model supports through gRPC, write a grid, stop."""
    from cm3leon_stack.demo import run_stack_demo

    check_settings()
    run_stack_demo(model, out, retriever, memory_path, memory, memory_docs)
