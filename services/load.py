"""The jobs the stack benchmark and the chaos soak send: numbered default text->image jobs over a few prompts,
one definition so that both measure the same work."""

from __future__ import annotations

import cm3leon_client as api
from cm3leon_client.api import jobs_pb2

PROMPTS = ("a red circle", "a blue square on black", "two green triangles", "a small yellow star", "a big circle")


def numbered_job(index: int) -> jobs_pb2.JobRequest:
    """Job `index` of a run: the prompts in turn, each job with its own seed (index + 1)."""
    return api.text_to_image(PROMPTS[index % len(PROMPTS)], seed=index + 1)
