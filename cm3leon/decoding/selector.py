"""Token selection: greedy, or sampling from per-request random streams drawn before the loop.

Reproducibility without per-row generator calls in the loop: each request's `torch.Generator` (seeded) draws
one uniform number per candidate and step up front; a step then samples every group at once by inverse CDF.
A request's samples therefore depend only on its seed and its own probabilities, never on its batch mates,
and the loop launches no per-row work and reads nothing back from the device.
"""

from __future__ import annotations

import torch


def draw_uniforms(seed: int, num_candidates: int, num_steps: int) -> torch.Tensor:
    """(num_candidates, num_steps) float64 uniforms in [0, 1) from a generator seeded with `seed` (on the CPU,
    so the stream is the same whatever device decodes)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand((num_candidates, num_steps), generator=generator, dtype=torch.float64)


class TokenSelector:
    """probs (G, V) -> tokens (G,): argmax where `greedy`, else inverse-CDF sampling with this step's uniforms."""

    def __init__(self, uniforms: torch.Tensor, greedy: torch.Tensor) -> None:
        self.uniforms = uniforms  # (G, steps) float64
        self.greedy = greedy  # (G,) bool

    def __call__(self, probs: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
        """`step`: the decode step of every group (an int), or of each group (G,) (groups that joined later)."""
        # float64 cumulative sums: u * total < total strictly, so the search never lands past the last token with
        # mass, and right=True skips zero-probability tokens (their cdf equals the previous one).
        cdf = probs.double().cumsum(dim=-1)
        if isinstance(step, torch.Tensor):
            uniforms = self.uniforms.gather(1, step.unsqueeze(1))
        else:
            uniforms = self.uniforms[:, step : step + 1]
        targets = uniforms * cdf[:, -1:]
        sampled = torch.searchsorted(cdf, targets, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)
        return torch.where(self.greedy, probs.argmax(dim=-1), sampled)
