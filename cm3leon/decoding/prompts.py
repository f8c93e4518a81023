"""Prompt ids of the conditional and unconditional streams.

CM3Leon's classifier-free guidance needs no extra training: the unconditional stream is the prompt with its
text replaced by `<mask>`. We mask at the id level, replacing every maximal run of text (and location) ids by one
`<mask>`; this works the same for Document prompts and for prompts that arrive as ids, and keeps `<break>`,
special tokens and images in place. Three-stream (editing) guidance also needs an "everything masked" stream:
image runs are then masked too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cm3leon.decoding.params import GenerationRequest
from cm3leon.tokenizers.vocab import Document, ImageCodes, Vocabulary

TEXT_KINDS = frozenset({"text", "location"})
CONTENT_KINDS = frozenset({"text", "location", "image"})


@dataclass(frozen=True)
class PromptStreams:
    full: list[int]  # the prompt as given: conditional stream (p_exp of CD-K)
    text_masked: list[int]  # text runs -> <mask>, images kept: CFG's unconditional / editing's image-only stream
    all_masked: list[int]  # text and image runs -> <mask>: editing's unconditional stream


def document_prompt_ids(vocab: Vocabulary, document: Document, target: str) -> list[int]:
    """Ids of a Document prompt, ready to be continued with `target` (see GenerationRequest)."""
    ids = vocab.encode_document(document, bos=True, eos=False)
    ends_with_image = bool(document) and isinstance(document[-1], ImageCodes)
    if document and (target == "image" or ends_with_image):
        ids.append(vocab.break_id)
    return ids


def last_document(vocab: Vocabulary, ids: Sequence[int]) -> list[int]:
    """The ids from the prompt's last `<bos>` on: the query document, after any retrieved documents."""
    ids = list(ids)
    if vocab.bos_id not in ids:
        return ids
    return ids[len(ids) - 1 - ids[::-1].index(vocab.bos_id) :]


def last_image_ids(vocab: Vocabulary, ids: Sequence[int]) -> list[int] | None:
    """The image-code ids of the prompt's last complete image block (editing: the source image), or None."""
    run_end: int | None = None
    for index in range(len(ids) - 1, -1, -1):
        is_code = ids[index] in vocab.image_ids
        if is_code and run_end is None:
            run_end = index + 1
        elif not is_code and run_end is not None:
            if run_end - index - 1 == vocab.codes_per_image:
                return [int(token) for token in ids[index + 1 : run_end]]
            run_end = None
    if run_end == vocab.codes_per_image:
        return [int(token) for token in ids[:run_end]]
    return None


def mask_runs(vocab: Vocabulary, ids: Sequence[int], kinds: frozenset[str]) -> list[int]:
    """Replace each maximal run of ids whose kind is in `kinds` by a single `<mask>`."""
    masked: list[int] = []
    previous_kind: str | None = None
    for token in ids:
        kind = vocab.kind_of(token)
        if kind not in kinds:
            masked.append(token)
        elif previous_kind not in kinds or (kind == "image") != (previous_kind == "image"):
            # A new run starts: after a non-masked token, or where text meets image without a <break>.
            masked.append(vocab.mask_id)
        previous_kind = kind
    return masked


def prompt_streams(vocab: Vocabulary, request: GenerationRequest) -> PromptStreams:
    if request.prompt_ids is not None:
        full = [int(token) for token in request.prompt_ids]
    else:
        assert request.prompt is not None
        full = document_prompt_ids(vocab, request.prompt, request.target)
    return PromptStreams(
        full=full,
        text_masked=mask_runs(vocab, full, TEXT_KINDS),
        all_masked=mask_runs(vocab, full, CONTENT_KINDS),
    )
