"""Decoding instruction-task prompts: image outputs, text answers and CM3 infilling (shared by the evaluations
and the serving handlers).

Image and text outputs go through the model's scheduler (`ModelBundle.generate`: guidance, seeded requests);
infilling writes a known number of codes per `<mask:i>` span, which `generate` (one whole image block per image
target) does not model,
so it has its own small loop: every step re-reads the left-padded rows in full (no KV cache; an infill writes at
most a few dozen tokens), takes the best image code where a code is due and forces the next sentinel where a
span ends; a forward without positions never touches the model's KV cache, so other decodes keep theirs. The
loops read only the checkpoint's model, vocabulary and VQ tokenizer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cm3leon.bundle import ModelBundle
from cm3leon.decoding import (
    CancelCheck,
    ChannelScorer,
    GenerationCancelled,
    GenerationRequest,
    ProgressCallback,
    SamplingParams,
    Scorer,
    left_pad,
    no_rerank,
)
from cm3leon.decoding.params import Target
from cm3leon.tasks.parsing import image_output, text_answer
from cm3leon.tokenizers.vocab import ImageCodes, Vocabulary

# Segmentation has one right answer per pixel: the first map is decoded greedily.
SEGMENTATION_PARAMS = SamplingParams.preset("segmentation")


def request_seed(seed: int, index: int) -> int:
    """The sampling seed of the `index`-th request of a run: reproducible, distinct per request."""
    return int.from_bytes(random.Random(f"{seed}:{index}").randbytes(7), "big")


def seeded_batches(
    prompts: Sequence[Sequence[int]], target: Target, params: SamplingParams, batch_size: int, seed: int
) -> Iterator[list[GenerationRequest]]:
    """The prompts as requests in batches of `batch_size`, request i seeded by `request_seed(seed, i)` (so every
    setting sees the same random numbers whatever the batch size)."""
    for first in range(0, len(prompts), batch_size):
        yield [
            GenerationRequest(prompt_ids=list(p), target=target, params=params.replace(seed=request_seed(seed, i)))
            for i, p in enumerate(prompts[first : first + batch_size], start=first)
        ]


@dataclass(frozen=True)
class ImageSamples:
    chosen: list[ImageCodes | None]  # per prompt, the candidate the scorer chose (None: no whole image block)
    candidates: list[list[ImageCodes | None]]  # per prompt, every candidate, in sampling order
    scores: list[float]  # per prompt, the chosen candidate's score (pools of samples compare these)

    def pixels(self, checkpoint: ModelBundle) -> np.ndarray:
        """The chosen codes decoded, (N, H, W, 3) uint8 (a white image where no whole block came out, so an
        unreadable output scores as wrong)."""
        return decode_codes(checkpoint, self.chosen)


def sample_image_outputs(
    checkpoint: ModelBundle,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    batch_size: int,
    seed: int,
    scorer: Scorer | None = None,
    score_single: bool = False,
) -> ImageSamples:
    """Per prompt (ending with the `<break>` before an image): the chosen codes and every candidate's, so an
    evaluation can tell a choice that missed a right candidate from samples none of which are right. A single
    candidate is not scored (score 0: nothing to choose) unless `score_single` (its score is compared elsewhere)."""
    scorer = no_rerank if params.num_candidates == 1 and not score_single else scorer
    samples = ImageSamples([], [], [])
    for requests in seeded_batches(prompts, "image", params, batch_size, seed):
        for result in checkpoint.generate(requests, scorer=scorer):
            samples.chosen.append(image_output(result.token_ids, checkpoint.vocab))
            samples.candidates.append([image_output(c.token_ids, checkpoint.vocab) for c in result.candidates])
            samples.scores.append(result.score)
    return samples


def caption_images(
    checkpoint: ModelBundle,
    images: Sequence[ImageCodes],
    params: SamplingParams,
    batch_size: int,
    seed: int,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> tuple[list[str], int]:
    """A caption per image, as the caption job decodes it (several samples: the noisy channel chooses), within
    what the context leaves after the image."""
    scorer = no_rerank if params.num_candidates == 1 else ChannelScorer(checkpoint.model, checkpoint.vocab)
    prompt_length = checkpoint.vocab.codes_per_image + 2  # <bos> IMAGE <break>
    room = checkpoint.model.config.max_seq_len - prompt_length + 1  # the last token is never fed back
    params = params.replace(max_new_tokens=max(1, min(params.max_new_tokens, room)))
    captions, tokens = [], 0
    for first in range(0, len(images), batch_size):
        requests = [
            GenerationRequest(prompt=[codes], target="text", params=params.replace(seed=request_seed(seed, i)))
            for i, codes in enumerate(images[first : first + batch_size], start=first)
        ]
        results = checkpoint.generate(requests, scorer=scorer, progress=progress, should_cancel=should_cancel)
        captions += [result.text.strip() for result in results]
        tokens += sum(len(c.token_ids) for result in results for c in result.candidates)
    return captions, tokens


def decode_codes(checkpoint: ModelBundle, codes: Sequence[ImageCodes | None]) -> np.ndarray:
    """Pixels of each code block (white for None), through the VQ decoder in one batch."""
    size = checkpoint.image_tokenizer.config.image_size
    pixels = np.full((len(codes), size, size, 3), 255, dtype=np.uint8)
    present = [i for i, c in enumerate(codes) if c is not None]
    if present:
        grid = torch.tensor([codes[i].codes for i in present], dtype=torch.long)  # type: ignore[union-attr]
        with torch.inference_mode():
            pixels[present] = checkpoint.image_tokenizer.decode(grid.view(len(present), -1))
    return pixels


def generate_text_outputs(
    checkpoint: ModelBundle, prompts: Sequence[Sequence[int]], params: SamplingParams, batch_size: int, seed: int
) -> list[str]:
    """The generated answer text of each prompt (decoding stops at `<eos>` or `params.max_new_tokens`)."""
    answers: list[str] = []
    for requests in seeded_batches(prompts, "text", params, batch_size, seed):
        results = checkpoint.generate(requests, scorer=no_rerank)
        answers.extend(text_answer(result.token_ids, checkpoint.vocab) for result in results)
    return answers


@torch.inference_mode()
def generate_infills(
    checkpoint: ModelBundle,
    prompts: Sequence[Sequence[int]],
    span_lengths: Sequence[Sequence[int]],
    batch_size: int,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> list[list[int]]:
    """Greedy infill continuations: per prompt (ending `<infill> <mask:0>`), span 0's codes, `<mask:1>`, span 1's
    codes, ..., `<eos>` — the layout `cm3leon.tasks.parsing.infill_result` reads back. `progress(done, total)`
    and `should_cancel()` run between steps, as in `generate` (serving uses them; a cancel raises
    GenerationCancelled)."""
    plans = [infill_plan(checkpoint.vocab, lengths) for lengths in span_lengths]
    batches = [range(first, min(first + batch_size, len(prompts))) for first in range(0, len(prompts), batch_size)]
    steps = [max(len(plans[i]) for i in batch) for batch in batches]
    total, done = sum(steps), 0
    outputs: list[list[int]] = []
    for batch, count in zip(batches, steps, strict=True):

        def step(n: int, offset: int = done) -> None:
            if progress is not None:
                progress(offset + n, total)

        rows, row_plans = [prompts[i] for i in batch], [plans[i] for i in batch]
        outputs.extend(_decode_infill_batch(checkpoint, rows, row_plans, step, should_cancel))
        done += count
    return outputs


def infill_plan(vocab: Vocabulary, lengths: Sequence[int]) -> list[int | None]:
    """Per step: None where a code is written, else the sentinel (or the final `<eos>`) that is forced."""
    plan: list[int | None] = []
    for index, length in enumerate(lengths):
        if index:
            plan.append(vocab.mask_sentinel_ids[index])
        plan.extend([None] * length)
    return [*plan, vocab.eos_id]


def _decode_infill_batch(
    checkpoint: ModelBundle,
    prompts: Sequence[Sequence[int]],
    plans: Sequence[list[int | None]],
    progress: ProgressCallback,
    should_cancel: CancelCheck | None,
) -> list[list[int]]:
    model, vocab = checkpoint.model, checkpoint.vocab
    device = model.token_embedding.weight.device
    rows = [list(p) for p in prompts]
    generated: list[list[int]] = [[] for _ in prompts]
    image_ids = torch.arange(vocab.image_ids.start, vocab.image_ids.stop, device=device)
    for step in range(max(len(plan) for plan in plans)):
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled("infilling cancelled by the caller")
        due = [i for i, plan in enumerate(plans) if step < len(plan) and plan[step] is None]
        best: dict[int, int] = {}
        if due:
            tokens, row_start = left_pad([rows[i] for i in due], vocab.pad_id, device)
            logits = model(tokens, row_start=row_start)[:, -1]
            choice = image_ids[logits[:, image_ids].float().argmax(dim=-1)]
            best = dict(zip(due, choice.tolist(), strict=True))
        for i, plan in enumerate(plans):
            if step < len(plan):
                token = plan[step] if plan[step] is not None else best[i]
                rows[i].append(token)  # type: ignore[arg-type]
                generated[i].append(token)  # type: ignore[arg-type]
        progress(step + 1)
    return generated
