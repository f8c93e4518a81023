"""`corpus add|search|delete`: the retrieval memory of a running stack, through the gateway's CorpusService.

(`cm3leon corpus build`, which embeds world documents locally with the model core, is the core's command.)
"""

from pathlib import Path
from typing import Annotated

import typer

from cm3leon_client.api import corpus_pb2
from cm3leon_client.builders import image_input
from cm3leon_client.channel import Connection
from cm3leon_client.cli.errors import EXIT_CODES_HELP
from cm3leon_client.cli.options import with_connection
from cm3leon_client.client import Client

corpus_app = typer.Typer(no_args_is_help=True, epilog=EXIT_CODES_HELP)


@corpus_app.command("add")
@with_connection
def corpus_add(
    connection: Connection,
    doc_id: Annotated[str, typer.Option(help="Document id (letters, digits, '-', '_', '.').")],
    text: Annotated[str, typer.Option(help="The document's text.")] = "",
    image: Annotated[Path | None, typer.Option(help="The document's image (PNG/JPEG).")] = None,
) -> None:
    """Add (or overwrite) one document of text and/or image in the stack's retrieval memory."""
    document = corpus_pb2.CorpusDocument(doc_id=doc_id, text=text, image=image_input(image) if image else None)
    with Client(connection=connection) as client:
        response = client.add_documents([document])
    typer.echo(f"added {', '.join(response.doc_ids)}; the memory holds {response.memory_size} documents")


@corpus_app.command("search")
@with_connection
def corpus_search(
    connection: Connection,
    text: Annotated[str, typer.Argument(help="Query text (may be empty with --image).")] = "",
    image: Annotated[Path | None, typer.Option(help="Query image (PNG/JPEG).")] = None,
    k: Annotated[int, typer.Option(help="Documents to return (0: the memory's default).")] = 0,
) -> None:
    """Search the stack's retrieval memory (relevance, modality and diversity rules); one line per document."""
    with Client(connection=connection) as client:
        response = client.search(text=text, image=image, k=k)
    for document in response.documents:
        typer.echo(f"{document.score:.3f}  {document.doc_id}  {document.text}")


@corpus_app.command("delete")
@with_connection
def corpus_delete(
    connection: Connection,
    doc_ids: Annotated[list[str], typer.Argument(help="Ids of the documents to delete.")],
) -> None:
    """Delete documents from the stack's retrieval memory."""
    with Client(connection=connection) as client:
        response = client.delete_documents(doc_ids)
    typer.echo(f"deleted; the memory holds {response.memory_size} documents")
