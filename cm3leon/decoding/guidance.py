"""Classifier-free guidance mixed in one batch (the streams of a group run in the same forward pass).

Two streams (CM3Leon): l = u + a * (c - u), c the conditional logits, u the unconditional ones (prompt text
replaced by `<mask>`).

Three streams (editing; InstructPix2Pix's formula, as in Chameleon's in-batch instruct CFG):

    l = u + s_img * (i - u) + s_txt * (f - i)

f: full prompt, i: image-only (instruction text masked, images kept), u: everything masked. s_img pulls towards
the input image, s_txt towards following the instruction. The two-stream rule is the special case i = u
(s_txt = a), and plain sampling the case f = i = u, so one formula serves every group of a batch.
"""

from __future__ import annotations

import torch


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """uncond + scale * (cond - uncond); `scale` a float or (G,) tensor."""
    scale = _column(scale, cond)
    return uncond + scale * (cond - uncond)


def three_stream_guidance(
    full: torch.Tensor,
    image_only: torch.Tensor,
    uncond: torch.Tensor,
    text_scale: torch.Tensor | float,
    image_scale: torch.Tensor | float,
) -> torch.Tensor:
    """uncond + image_scale * (image_only - uncond) + text_scale * (full - image_only)."""
    text_scale, image_scale = _column(text_scale, full), _column(image_scale, full)
    return uncond + image_scale * (image_only - uncond) + text_scale * (full - image_only)


class StreamMixer:
    """Gathers each group's stream rows from (rows, V) logits and mixes them into (groups, V)."""

    def __init__(
        self,
        full_rows: torch.Tensor,
        image_only_rows: torch.Tensor,
        uncond_rows: torch.Tensor,
        text_scales: torch.Tensor,
        image_scales: torch.Tensor,
    ) -> None:
        self.full_rows = full_rows
        self.image_only_rows = image_only_rows
        self.uncond_rows = uncond_rows
        self.text_scales = text_scales
        self.image_scales = image_scales

    def streams(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(full, image_only, uncond) logits per group, each (G, V)."""
        return logits[self.full_rows], logits[self.image_only_rows], logits[self.uncond_rows]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        full, image_only, uncond = self.streams(logits)
        return three_stream_guidance(full, image_only, uncond, self.text_scales, self.image_scales)


def _column(scale: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    return scale.to(like.dtype).unsqueeze(1) if isinstance(scale, torch.Tensor) else scale
