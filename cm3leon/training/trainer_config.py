"""The trainer's configuration (with presets) and its optimizer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from cm3leon.presets import Presets


@dataclass(frozen=True)
class TrainerConfig(Presets):
    """Optimisation and bookkeeping. Presets: `tiny` (tests) and `shapes` (the demo model on CPU).

    AdamW betas (0.9, 0.95), eps 1e-8, weight decay 0.1 and clipping at 1.0 are the OPT-style defaults the
    CM3Leon model family follows.
    """

    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to learning_rate * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    batch_size: int = 8  # rows per micro-batch, per rank
    grad_accum: int = 1
    # Stop at max_steps or after max_minutes of training (summed over resumes), whichever comes first.
    max_steps: int | None = 1000
    max_minutes: float | None = None
    # A time-budgeted run measures this many steps before fixing its cosine horizon from its speed.
    horizon_calibration_steps: int = 20
    # Re-estimate that horizon at every step from the speed measured so far instead of fixing it once, so the
    # cosine ends at the deadline when the speed changes mid-run (a GPU shared with another job for part of the
    # run). Off by default: a fixed horizon makes a resumed run follow the schedule it started with.
    horizon_follows_speed: bool = False
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 10.0
    log_every_steps: int = 10
    eval_every_steps: int | None = None
    # bf16 autocast (master weights stay fp32). None: on where the device has native bf16 (AVX512-BF16 CPUs and
    # GPUs: faster than fp32), off where it would be emulated (far slower than fp32): see hardware.py.
    bf16: bool | None = None
    # Worker processes that build micro-batches ahead of the loop (0: built in the loop). A GPU step of the
    # shapes model takes less time than packing its batch in Python; the batch source is a pure function of
    # the index, so workers change nothing but speed.
    data_workers: int = 0
    seed: int = 0
    progress: bool = True

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(
            learning_rate=3e-3, warmup_steps=5, batch_size=4, max_steps=30, log_every_steps=5,
            checkpoint_every_minutes=None, bf16=False, progress=False,
        ),
        "shapes": dict(learning_rate=1e-3, warmup_steps=200, batch_size=8, max_steps=None, max_minutes=60.0),
    }

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("give max_steps, max_minutes or both: training needs an end")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be at least 1")


def build_optimizer(model: torch.nn.Module, config: TrainerConfig) -> torch.optim.AdamW:
    """AdamW; matrices (and embeddings) decay, gains of norms do not (decaying them only fights the norm)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2), eps=config.eps)


def with_overrides(config: TrainerConfig, **overrides: Any) -> TrainerConfig:
    """`config` with the non-None overrides applied (CLI flags that were not given stay as the preset says)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
