"""Learning-rate schedule: linear warmup, then cosine decay to a floor; a pure function of the step.

Being a function of (step, horizon) rather than a stateful scheduler object is what keeps resume exact: the
checkpoint only needs the step and the horizon.
"""

from __future__ import annotations

import math


def warmup_cosine_lr(
    step: int, peak_lr: float, warmup_steps: int, total_steps: int | None, min_lr_ratio: float
) -> float:
    """LR for optimizer step `step` (0-based). With `total_steps` unknown (a time-budgeted run that has not
    measured its speed yet) the LR holds at the peak after warmup."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if total_steps is None:
        return peak_lr
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    floor = peak_lr * min_lr_ratio
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
