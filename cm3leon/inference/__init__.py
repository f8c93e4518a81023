"""Inference for serving: domain requests (`cm3leon.requests`) in, domain results out, on a model bundle.

    engine.py     Engine: runs a request on a ModelBundle with progress, cancellation, previews
    handlers.py   the registry: job kind -> the function that runs it; text->image and captioning
    task_handlers.py  the instruction-tuned kinds (VQA, edit, infill, segmentation, structure, grounded, text)
    task_prompts.py   their prompts: the training formats (cm3leon.tasks.formats) for a request, id for id
    task_inputs.py    request text and boxes -> those formats' inputs: the generic RequestReader (no world, no torch)
    policies.py   the policy registry and `reader_for` (a model's world reads requests its own way)
    running.py    what a handler runs with: progress, cancellation, stage hooks, seeds, images with previews
    retrieval.py  retrieved context from the Qdrant memory, prepended to prompts (RA-CM3 / CM3Leon)
    preview.py    progressive previews: the image rows decoded so far, while the image block is generated
    corpus.py     adding, searching and deleting memory documents (the CorpusService's model side)
"""
