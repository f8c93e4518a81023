"""Logits processors: small pieces that map (groups, vocab) scores to scores, one parameter per group.

Each processor holds its per-group parameters as tensors, so one call handles a batch of requests that asked
for different temperatures, top-k or top-p, with no host-device synchronisation.
"""

from __future__ import annotations

from typing import Protocol

import torch

from cm3leon.tokenizers.vocab import Vocabulary

NEG_INF = float("-inf")


class LogitsProcessor(Protocol):
    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (G, V) -> scores (G, V); -inf marks a forbidden token."""
        ...


class Temperature:
    """Divide by the temperature; a temperature of 0 (greedy) leaves the scores as they are."""

    def __init__(self, temperatures: torch.Tensor) -> None:
        self.divisor = torch.where(temperatures > 0, temperatures, torch.ones_like(temperatures)).unsqueeze(1)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.divisor


class TopK:
    """Keep each row's k best tokens (ties at the k-th value kept); k = 0 keeps everything."""

    def __init__(self, ks: torch.Tensor) -> None:
        self.ks = ks
        self.active = bool((ks > 0).any())  # host-side, once: no group asks for top-k -> skip the sort

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return scores  # k = 0 everywhere keeps every token (exactly what the sort would give)
        vocab_size = scores.shape[-1]
        ks = torch.where(self.ks > 0, self.ks, torch.full_like(self.ks, vocab_size)).clamp(max=vocab_size)
        kth_best = scores.sort(dim=-1, descending=True).values.gather(1, (ks - 1).unsqueeze(1))
        return scores.masked_fill(scores < kth_best, NEG_INF)


class TopP:
    """Nucleus: keep the smallest set of best tokens whose probability reaches p (at least one); p = 1 is off."""

    def __init__(self, ps: torch.Tensor) -> None:
        self.ps = ps

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        sorted_probs = sorted_scores.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = (mass_before >= self.ps.unsqueeze(1)) & (self.ps < 1).unsqueeze(1)
        drop = torch.empty_like(drop_sorted).scatter_(1, order, drop_sorted)
        return scores.masked_fill(drop, NEG_INF)


class ModalityConstraint:
    """Which ids each group may emit next, from the group's target and how many image codes it has written.

    Image target: exactly `vocab.codes_per_image` image-code ids, then `<eos>` is forced (the document ends).
    Text target: text and location ids, or `<eos>`/`<break>` to stop.
    """

    def __init__(self, vocab: Vocabulary, image_target: torch.Tensor) -> None:
        device = image_target.device
        self.image_target = image_target  # (G,) bool
        self.codes_per_image = vocab.codes_per_image
        self.codes_written = torch.zeros(image_target.shape, dtype=torch.long, device=device)
        self.image_ids = _id_mask(vocab.size, vocab.image_ids, device)
        self.end_of_image = _id_mask(vocab.size, [vocab.eos_id], device)
        self.text_ids = _id_mask(
            vocab.size, [*vocab.text_ids, *vocab.location_ids, vocab.eos_id, vocab.break_id], device
        )

    def in_image_block(self) -> torch.Tensor:
        """(G,) bool: the next token is an image code."""
        return self.image_target & (self.codes_written < self.codes_per_image)

    def allowed(self) -> torch.Tensor:
        """(G, V) bool."""
        after_image = torch.where(self.in_image_block().unsqueeze(1), self.image_ids, self.end_of_image)
        return torch.where(self.image_target.unsqueeze(1), after_image, self.text_ids)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(~self.allowed(), NEG_INF)

    def update(self, tokens: torch.Tensor) -> None:
        self.codes_written += (self.image_ids[tokens] & self.image_target).long()


class SourceCopyPrior:
    """Image targets: add a bias to the score of the reference image's code at the grid position being written.

    An edit re-writes the whole image although most of it should stay as it was, and a small model re-draws the
    untouched objects imperfectly (a triangle comes back as a diamond). With the source image as the reference,
    its own code wins ties and near-ties among the tokens the guided scores allow, while a code the instruction
    changes still wins where the model is confident. Tokens already forbidden (-inf) stay forbidden.
    """

    def __init__(self, reference_ids: torch.Tensor, biases: torch.Tensor) -> None:
        self.reference_ids = reference_ids  # (G, codes_per_image) image-code ids; any ids where the bias is 0
        self.biases = biases  # (G,) float, 0 = off

    def __call__(self, scores: torch.Tensor, codes_written: torch.Tensor, in_image: torch.Tensor) -> torch.Tensor:
        position = codes_written.clamp(max=self.reference_ids.shape[1] - 1).unsqueeze(1)
        reference = self.reference_ids.gather(1, position)
        bias = torch.where(in_image, self.biases, torch.zeros_like(self.biases)).unsqueeze(1).to(scores.dtype)
        return scores.scatter_add(1, reference, bias)


class StopCriteria:
    """A group stops after emitting a stop id (`<eos>`, `<break>`) or `max_new` tokens; later tokens are pad."""

    def __init__(self, vocab: Vocabulary, max_new: torch.Tensor) -> None:
        self.max_new = max_new  # (G,) long
        self.pad_id = vocab.pad_id
        self.stop_ids = _id_mask(vocab.size, [vocab.eos_id, vocab.break_id], max_new.device)
        self.finished = torch.zeros(max_new.shape, dtype=torch.bool, device=max_new.device)

    def apply(self, tokens: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
        """Replace tokens of finished groups by pad, then mark the groups this token finishes."""
        tokens = torch.where(self.finished, torch.full_like(tokens, self.pad_id), tokens)
        self.finished |= self.stop_ids[tokens] | (self.max_new <= step + 1)
        return tokens


def _id_mask(vocab_size: int, ids: range | list[int], device: torch.device) -> torch.Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[torch.as_tensor(list(ids), dtype=torch.long, device=device)] = True
    return mask
