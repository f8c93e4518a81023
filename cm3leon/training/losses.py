"""Next-token loss under a target mask, split by modality, and held-out perplexity.

The trainer optimises one number (mean loss over all targets of a micro-batch) but reports text and image
loss apart: they live on different scales (a caption is nearly determined by its image; an image from a short
caption is not), and a model can improve at one while the other stalls.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cm3leon.tokenizers.vocab import Vocabulary
from cm3leon.training.packing import TokenBatch

# Modality name -> the id ranges whose targets count towards it.
Modalities = Mapping[str, Sequence[range]]


def vocabulary_modalities(vocab: Vocabulary) -> dict[str, list[range]]:
    """Text (with location bins, which are written as text) and image codes; specials count in the total only."""
    return {"text": [vocab.text_ids, vocab.location_ids], "image": [vocab.image_ids]}


def masked_token_losses(logits: torch.Tensor, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target cross entropy (fp32) and the targets it scores, flattened: the positions with loss only."""
    targets = batch.tokens[:, 1:]
    selected = batch.loss_mask[:, 1:]
    # Select before the softmax: padding and prompt tokens cost no log-softmax over the vocabulary.
    chosen_logits = logits[:, :-1][selected].float()
    chosen_targets = targets[selected]
    return F.cross_entropy(chosen_logits, chosen_targets, reduction="none"), chosen_targets


@dataclass
class LossTotals:
    """Summed losses and counts, total and per modality: sums add across micro-batches and ranks exactly."""

    loss_sum: float = 0.0
    count: int = 0
    modality_sum: dict[str, float] = field(default_factory=dict)
    modality_count: dict[str, int] = field(default_factory=dict)

    def add(self, losses: torch.Tensor, targets: torch.Tensor, modalities: Modalities) -> None:
        losses = losses.detach().float()
        self.loss_sum += float(losses.sum())
        self.count += losses.numel()
        for name, ranges in modalities.items():
            selected = torch.zeros_like(targets, dtype=torch.bool)
            for ids in ranges:
                selected |= (targets >= ids.start) & (targets < ids.stop)
            self.modality_sum[name] = self.modality_sum.get(name, 0.0) + float(losses[selected].sum())
            self.modality_count[name] = self.modality_count.get(name, 0) + int(selected.sum())

    def merge(self, other: LossTotals) -> None:
        self.loss_sum += other.loss_sum
        self.count += other.count
        for name, value in other.modality_sum.items():
            self.modality_sum[name] = self.modality_sum.get(name, 0.0) + value
            self.modality_count[name] = self.modality_count.get(name, 0) + other.modality_count[name]

    def as_vector(self, names: Iterable[str]) -> list[float]:
        """Flat numbers for an all-reduce across ranks (see `from_vector`)."""
        vector = [self.loss_sum, float(self.count)]
        for name in names:
            vector += [self.modality_sum.get(name, 0.0), float(self.modality_count.get(name, 0))]
        return vector

    @classmethod
    def from_vector(cls, vector: Sequence[float], names: Sequence[str]) -> LossTotals:
        totals = cls(loss_sum=vector[0], count=round(vector[1]))
        for i, name in enumerate(names):
            totals.modality_sum[name] = vector[2 + 2 * i]
            totals.modality_count[name] = round(vector[3 + 2 * i])
        return totals

    def means(self) -> dict[str, float]:
        """{"loss": ..., "<modality>_loss": ...}; a modality without targets is NaN (never silently 0)."""
        metrics = {"loss": self.loss_sum / self.count if self.count else math.nan}
        for name, total in self.modality_sum.items():
            count = self.modality_count[name]
            metrics[f"{name}_loss"] = total / count if count else math.nan
        return metrics


@torch.no_grad()
def evaluate_perplexity(
    model: nn.Module,
    batches: Iterable[TokenBatch],
    modalities: Modalities,
    device: torch.device | str = "cpu",
    bf16: bool = False,
) -> dict[str, float]:
    """Mean loss and perplexity over all targets and per modality (token-weighted over every batch)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    totals = LossTotals()
    try:
        for batch in batches:
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(batch.tokens)
            totals.add(*masked_token_losses(logits, batch), modalities)
    finally:
        model.train(was_training)
    metrics = totals.means()
    for name, value in list(metrics.items()):
        metrics[name.replace("loss", "perplexity")] = math.exp(value) if not math.isnan(value) else math.nan
    metrics["targets"] = float(totals.count)
    return metrics
