"""The cm3leon gateway's Python client: typed request builders, `Client` / `AsyncClient`, download helpers.

    import cm3leon_client as cm3

    with cm3.Client("127.0.0.1:50051", api_key="dev-key") as client:
        job = client.wait(client.submit(cm3.text_to_image("a large red circle", seed=1)).job_id)
        cm3.download(job.result.images[0], "circle.png")

Needs only grpcio and protobuf (typer for the command line); never the model stack.
"""

from cm3leon_client.builders import (
    box,
    caption,
    edit,
    grounded_generation,
    image_input,
    infill,
    sampling,
    segmentation,
    structure_guided,
    text_rendering,
    text_to_image,
    visual_question,
)
from cm3leon_client.channel import API_KEY_HEADER, DEFAULT_TARGET, Connection
from cm3leon_client.client import FINISHED, AsyncClient, Client, download, download_outputs

__all__ = [
    "API_KEY_HEADER",
    "DEFAULT_TARGET",
    "FINISHED",
    "AsyncClient",
    "Client",
    "Connection",
    "box",
    "caption",
    "download",
    "download_outputs",
    "edit",
    "grounded_generation",
    "image_input",
    "infill",
    "sampling",
    "segmentation",
    "structure_guided",
    "text_rendering",
    "text_to_image",
    "visual_question",
]
