"""`cm3leon stack ...`: the embedded serving stack on this machine (see services/stack.py).

cm3leon stack up --model DIR       # Redis, S3 (weed mini), Qdrant local mode, a worker, the gateway; Ctrl-C
cm3leon stack demo --model DIR     # start it, one job of every kind the model supports, grid -> out/demo/
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from services.stack import Stack

stack_app = typer.Typer(no_args_is_help=True)

DEFAULT_MODEL = Path("models/shapes")
DEFAULT_RETRIEVER = Path("models/shapes/retriever")
DEFAULT_MEMORY_PATH = Path("out/qdrant")
DEFAULT_MEMORY = "shapes"
# World documents put in the memory when it is missing: enough for k = 2 neighbours to be relevant, built in
# well under a minute on a CPU core.
DEFAULT_MEMORY_DOCS = 2000
DEV_API_KEY = "dev-key"

Model = Annotated[Path, typer.Option(help="Model directory (cm3leon.checkpoint: decoder, vocabulary, vq/).")]
Retriever = Annotated[Path, typer.Option(help="Retriever directory (retrieval off when missing).")]
MemoryPath = Annotated[Path, typer.Option(help="Qdrant local-mode directory of the retrieval memory.")]
MemoryName = Annotated[str, typer.Option(help="Memory (collection) name.")]
MemoryDocs = Annotated[int, typer.Option(help="World documents to build the memory with when it is empty.")]


def ensure_memory(retriever: Path, vq: Path, path: Path, name: str, documents: int) -> None:
    """Build the demo retrieval memory if it is missing or empty (idempotent)."""
    if not (retriever / "retriever_config.json").exists():
        typer.echo(f"no retriever in {retriever}: the stack runs without retrieval")
        return
    from cm3leon.retrieval.config import MemoryConfig
    from cm3leon.retrieval.memory import Memory
    from cm3leon.retrieval.retriever import Retriever as RetrieverModel

    model = RetrieverModel.from_pretrained(retriever)
    memory = Memory.for_retriever(MemoryConfig.preset("shapes", name=name, path=str(path)), model)
    from cm3leon.tokenizers.image import ImageTokenizer

    try:
        count = memory.count()
        stored = memory.codes_fingerprint()
        if count and (vq / "config.json").exists() and stored != ImageTokenizer.from_pretrained(vq).fingerprint():
            typer.echo(f"the memory {name!r} holds codes of another image tokenizer: rebuilding it")
            memory.clear()
            count = 0
    finally:
        memory.close()
    if count == 0:
        from cm3leon.cli.corpus import corpus_build

        typer.echo(f"building the retrieval memory {name!r} in {path} ({documents} documents)")
        corpus_build(n=documents, memory=name, path=path, retriever=retriever, vq=vq, seed=0, threads=1)


def check_model(model: Path) -> None:
    if not (model / "model.safetensors").exists():
        raise typer.BadParameter(f"{model} has no decoder (model.safetensors); pass --model DIR")


def start_stack(stack: Stack, model: Path, retriever: Path, memory_path: Path, memory_name: str, port: int) -> None:
    check_model(model)
    worker_env = {
        "CM3LEON_MODEL_DIR": str(model.resolve()),
        "CM3LEON_RETRIEVER_DIR": str(retriever.resolve()),
        "CM3LEON_MEMORY_PATH": str(memory_path.resolve()),
        "CM3LEON_MEMORY_NAME": memory_name,
    }
    typer.echo("starting redis, s3 (weed mini), worker (loads the model), gateway ...")
    stack.start_redis()
    stack.start_s3()
    stack.start_worker("worker", worker_env)
    stack.start_gateway(env={"CM3LEON_PORT": str(port)} if port else None)


@stack_app.command("up")
def up(
    model: Model = DEFAULT_MODEL,
    retriever: Retriever = DEFAULT_RETRIEVER,
    memory_path: MemoryPath = DEFAULT_MEMORY_PATH,
    memory: MemoryName = DEFAULT_MEMORY,
    memory_docs: MemoryDocs = DEFAULT_MEMORY_DOCS,
    port: Annotated[int, typer.Option(help="Gateway port (0: a free one).")] = 0,
    workdir: Annotated[Path, typer.Option(help="Logs and data of the stack's processes.")] = Path("out/stack"),
) -> None:
    """Start the stack on 127.0.0.1 and keep it up until Ctrl-C (every process is stopped and waited for)."""
    from services.stack import Stack

    check_model(model)
    ensure_memory(retriever, model / "vq", memory_path, memory, memory_docs)
    stack = Stack(workdir, environment={"CM3LEON_API_KEYS": json.dumps({DEV_API_KEY: "dev"})})
    # Ctrl-C and SIGTERM alike stop the stack (SIGINT is re-armed: a background shell job starts with it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        start_stack(stack, model, retriever, memory_path, memory, port)
        target = f"127.0.0.1:{stack.gateway_port}"
        typer.echo(f"gateway   {target}   (API key {DEV_API_KEY!r}; grpcurl -plaintext {target} list)")
        typer.echo(f"redis     {stack.redis_url}")
        typer.echo(f"s3        http://127.0.0.1:{stack.s3_port}   logs in {workdir}/")
        typer.echo(
            f"try:      CM3LEON_TARGET={target} cm3leon jobs submit t2i 'a large red circle' --wait --out out/jobs"
        )
        typer.echo("Ctrl-C stops everything")
        while True:
            time.sleep(1)
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
    from services.demo import run_stack_demo

    run_stack_demo(model, out, retriever, memory_path, memory, memory_docs)
