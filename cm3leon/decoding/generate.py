"""`generate`: batched decoding of text or image continuations with a static KV cache.

Flow (habits from gpt-fast and Chameleon's inference): plan rows (requests x candidates x streams), left-pad
the prompts, prefill once, then one small forward per step that feeds every row its group's token at a shared
position. `progress` and `should_cancel` run between steps; whether all groups finished is read back from the
device only every `DecodingConfig.finish_check_interval` steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from cm3leon.decoding.params import (
    CandidateResult,
    DecodingConfig,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)
from cm3leon.decoding.pipeline import build_pipeline
from cm3leon.decoding.plan import BatchPlan, plan_batch
from cm3leon.decoding.rerank import LikelihoodScorer, Scorer, best_candidate
from cm3leon.model.transformer import Transformer
from cm3leon.tokenizers.vocab import ImageCodes, Vocabulary

DEFAULT_DECODING = DecodingConfig()
ImageDecoder = Callable[[torch.Tensor], "np.ndarray | torch.Tensor"]  # codes (B, g, g) -> uint8 (B, H, W, 3)
ProgressCallback = Callable[[int, int], None]  # (decode steps done, decode steps in total)
CancelCheck = Callable[[], bool]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> tokens (R, P) left-padded with pad_id, and each row's first real position (R,)."""
    length = max(len(row) for row in rows)
    tokens = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for index, row in enumerate(rows):
        tokens[index, length - len(row) :] = torch.tensor(list(row), dtype=torch.long)
    row_start = torch.tensor([length - len(row) for row in rows], dtype=torch.long)
    return tokens.to(device), row_start.to(device)


def _check_cancel(should_cancel: CancelCheck | None) -> None:
    if should_cancel is not None and should_cancel():
        raise GenerationCancelled("generation cancelled by the caller")


@torch.inference_mode()
def decode_plan(
    model: Transformer,
    vocab: Vocabulary,
    plan: BatchPlan,
    requests: Sequence[GenerationRequest],
    *,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    config: DecodingConfig = DEFAULT_DECODING,
) -> list[list[int]]:
    """Decode every group of the plan; per group, its generated ids up to and including its stop token."""
    device = model.token_embedding.weight.device
    prompt_length, num_steps = plan.prompt_length, plan.num_steps
    # The last sampled token is never fed back, so the cache needs one position less than the full sequence.
    sequence_length = prompt_length + num_steps - 1
    if sequence_length > model.config.max_seq_len:
        raise ValueError(
            f"prompt ({prompt_length}) + {num_steps} new tokens exceed max_seq_len {model.config.max_seq_len}"
        )
    tokens, row_start = left_pad(plan.rows, vocab.pad_id, device)
    pipeline = build_pipeline(vocab, plan, requests, device)
    row_group = torch.tensor(plan.row_group, dtype=torch.long, device=device)
    positions = torch.arange(sequence_length, device=device)
    generated = torch.full((len(plan.groups), num_steps), vocab.pad_id, dtype=torch.long, device=device)

    model.setup_caches(len(plan.rows), sequence_length)
    logits = model(tokens, positions[:prompt_length], row_start)[:, -1].float()
    steps_taken = 0
    for step in range(num_steps):
        _check_cancel(should_cancel)
        if step and step % config.finish_check_interval == 0 and bool(pipeline.stop.finished.all()):
            break  # the one read-back of the loop, every few steps
        group_tokens = pipeline.next_tokens(logits, step)
        generated[:, step] = group_tokens
        steps_taken = step + 1
        if progress is not None:
            progress(step + 1, num_steps)
        if step + 1 < num_steps:
            position = positions[prompt_length + step : prompt_length + step + 1]
            logits = model(group_tokens[row_group].unsqueeze(1), position, row_start)[:, -1].float()
    if steps_taken < num_steps and progress is not None:
        progress(num_steps, num_steps)  # stopped early: everything left was padding
    stop_ids = {vocab.eos_id, vocab.break_id}
    return [
        until_stop(ids[: group.max_new], stop_ids) for ids, group in zip(generated.tolist(), plan.groups, strict=True)
    ]


def until_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    for index, token in enumerate(ids):
        if token in stop_ids:
            return ids[: index + 1]
    return ids


def generate(
    model: Transformer,
    vocab: Vocabulary,
    requests: Sequence[GenerationRequest],
    *,
    image_decoder: ImageDecoder | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    scorer: Scorer | None = None,
    config: DecodingConfig = DEFAULT_DECODING,
) -> list[GenerationResult]:
    """Decode all requests in one batch; one result per request, in order. See GenerationRequest/SamplingParams.

    Every candidate is scored (`scorer`, default: the model's log-likelihood of it given the full prompt) and
    the best one is the result. Raises GenerationCancelled when `should_cancel()` turns True between steps.
    Not re-entrant on one model: the KV caches live in the model, so concurrent calls need separate models.
    """
    plan = plan_batch(vocab, requests)
    generated = decode_plan(model, vocab, plan, requests, progress=progress, should_cancel=should_cancel, config=config)
    _check_cancel(should_cancel)
    return build_results(
        model, vocab, plan, requests, generated, image_decoder=image_decoder, scorer=scorer, config=config
    )


def build_results(
    model: Transformer,
    vocab: Vocabulary,
    plan: BatchPlan,
    requests: Sequence[GenerationRequest],
    generated: Sequence[list[int]],
    *,
    image_decoder: ImageDecoder | None = None,
    scorer: Scorer | None = None,
    config: DecodingConfig = DEFAULT_DECODING,
) -> list[GenerationResult]:
    """Per request: its candidates (`generated`, one id list per group of the plan) scored, the best one decoded."""
    scorer = scorer or LikelihoodScorer(model, vocab, batch_size=config.scoring_batch_size)
    results = []
    for request_index, request in enumerate(requests):
        group_indices = plan.request_groups[request_index]
        candidate_ids = [generated[group] for group in group_indices]
        scores = [float(score) for score in scorer(request, plan.streams[request_index].full, candidate_ids)]
        best = best_candidate(scores)
        candidates = [
            CandidateResult(ids, plan.groups[group].method, score)
            for ids, group, score in zip(candidate_ids, group_indices, scores, strict=True)
        ]
        segments = vocab.decode_document(candidate_ids[best])
        text = vocab.decode_text(candidate_ids[best]) if request.target == "text" else ""
        results.append(
            GenerationResult(
                candidate_ids[best], segments, text, [], scores[best], best, candidates, plan.seeds[request_index]
            )
        )
    if image_decoder is not None:
        decode_images(vocab, results, image_decoder)
    return results


def decode_images(vocab: Vocabulary, results: list[GenerationResult], image_decoder: ImageDecoder) -> None:
    """All results' image segments through the decoder in one batch."""
    owners = [(result, s) for result in results for s in result.segments if isinstance(s, ImageCodes)]
    if not owners:
        return
    grid = vocab.image_grid
    codes = torch.tensor([segment.codes for _, segment in owners], dtype=torch.long).view(-1, grid, grid)
    pixels = image_decoder(codes)
    array = pixels.cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    for (result, _), image in zip(owners, array, strict=True):
        result.images.append(Image.fromarray(image.astype(np.uint8)))


def generate_image_codes(
    model: Transformer,
    vocab: Vocabulary,
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    scorer: Scorer | None = None,
) -> torch.Tensor:
    """Image codes (N, g, g) for prompts that are already ids (each ending with the `<break>` before the image)."""
    requests = [GenerationRequest(prompt_ids=list(ids), target="image", params=params) for ids in prompt_ids]
    results = generate(model, vocab, requests, scorer=scorer)
    codes = [vocab.decode_image(result.token_ids[: vocab.codes_per_image]).codes for result in results]
    return torch.tensor(codes, dtype=torch.long).view(len(results), vocab.image_grid, vocab.image_grid)
