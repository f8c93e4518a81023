"""Inference for serving: domain requests in, domain results out, on a checkpoint loaded once.

    requests.py   the job kinds as dataclasses (no torch: the gateway builds them too), results, errors
    engine.py     Engine: loads a model directory once, runs a request with progress, cancellation, previews
    capabilities.py  what a model directory declares it runs (capabilities.json, written by `train sft`)
    handlers.py   the registry: job kind -> the function that runs it; text->image and captioning
    task_handlers.py  the instruction-tuned kinds (VQA, edit, infill, segmentation, structure, grounded, text)
    task_prompts.py   their prompts: the training formats (cm3leon.tasks.formats) for a request, id for id
    task_inputs.py    request text and boxes -> the world's symbolic inputs of those formats (no torch)
    running.py    what a handler runs with: progress, cancellation, stage hooks, seeds, images with previews
    retrieval.py  retrieved context from the Qdrant memory, prepended to prompts (RA-CM3 / CM3Leon)
    preview.py    progressive previews: the image rows decoded so far, while the image block is generated
    corpus.py     adding, searching and deleting memory documents (the CorpusService's model side)

Only `requests` is imported here: importing this package never loads torch.
"""

from cm3leon.inference.requests import (
    JOB_KINDS,
    Caption,
    Edit,
    EngineResult,
    GroundedGeneration,
    GroundedObject,
    ImageRef,
    Infill,
    JobCancelled,
    JobRequest,
    NormBox,
    Progress,
    RetrievedContext,
    Sampling,
    Segmentation,
    StructureGuided,
    TextRendering,
    TextToImage,
    UnsupportedJobKind,
    VisualQuestion,
    kind_of,
)

__all__ = [
    "JOB_KINDS",
    "Caption",
    "Edit",
    "EngineResult",
    "GroundedGeneration",
    "GroundedObject",
    "ImageRef",
    "Infill",
    "JobCancelled",
    "JobRequest",
    "NormBox",
    "Progress",
    "RetrievedContext",
    "Sampling",
    "Segmentation",
    "StructureGuided",
    "TextRendering",
    "TextToImage",
    "UnsupportedJobKind",
    "VisualQuestion",
    "kind_of",
]
