"""`cm3leon corpus build`: the retrieval memory (documents embedded into a Qdrant collection), built locally.

The commands that go through a running gateway (`corpus add|search|delete`) are the client's
(`cm3leon_client.cli.corpus`); the `cm3leon` entry point shows both under `corpus`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

corpus_app = typer.Typer(no_args_is_help=True)

# Where `make demo` keeps the shapes world's retriever, image tokenizer and memory.
DEFAULT_RETRIEVER_DIR = Path("models/shapes/retriever")
DEFAULT_VQ_DIR = Path("models/shapes/vq")
DEFAULT_MEMORY_PATH = Path("out/qdrant")


@corpus_app.command("build")
def corpus_build(
    n: Annotated[int, typer.Option(help="Train-split world documents (caption + image) to store.")] = 10_000,
    memory: Annotated[str, typer.Option(help="Memory (collection) name.")] = "shapes",
    path: Annotated[
        Path, typer.Option(help="Embedded Qdrant directory (ignored when QDRANT_URL selects a server).")
    ] = DEFAULT_MEMORY_PATH,
    retriever: Annotated[Path, typer.Option(help="Trained retriever directory.")] = DEFAULT_RETRIEVER_DIR,
    vq: Annotated[
        Path | None, typer.Option(help="VQ image tokenizer: store each image's codes inline (else an image_key).")
    ] = DEFAULT_VQ_DIR,
    seed: Annotated[int, typer.Option(help="Seed of the document stream (document ids derive from it).")] = 0,
    threads: Annotated[
        int | None, typer.Option(help="Torch intra-op threads; 1 suits a shared 2-core box (0 = torch's choice).")
    ] = 1,
) -> None:
    """Generate train-split documents, embed them and upsert them into the memory; re-running is idempotent."""
    import torch

    from cm3leon.data.world import Split, World, WorldConfig
    from cm3leon.retrieval.config import MemoryConfig
    from cm3leon.retrieval.corpus import build_memory
    from cm3leon.retrieval.documents import world_documents
    from cm3leon.retrieval.memory import Memory
    from cm3leon.retrieval.retriever import Retriever
    from cm3leon.tokenizers.image import CONFIG_FILE as VQ_CONFIG_FILE
    from cm3leon.tokenizers.image import ImageTokenizer

    if threads:
        torch.set_num_threads(threads)
    model = Retriever.from_pretrained(retriever)
    image_tokenizer = None
    if vq is not None and (vq / VQ_CONFIG_FILE).exists():
        image_tokenizer = ImageTokenizer.from_pretrained(vq)
    elif vq is not None:
        typer.echo(f"no VQ tokenizer in {vq}: storing image keys instead of codes")
    config = MemoryConfig.preset("shapes", name=memory, path=str(path))
    store = Memory.for_retriever(config, model)
    try:
        documents = world_documents(World(WorldConfig.preset("shapes")), n, seed=seed, split=Split.TRAIN)
        written = build_memory(store, model, documents, total=n, image_tokenizer=image_tokenizer)
        typer.echo(f"upserted {written} documents; memory {memory!r} holds {store.count()} points")
    finally:
        store.close()
