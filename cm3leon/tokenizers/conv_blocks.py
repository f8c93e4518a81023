"""Convolutional encoder and decoder of the VQ image tokenizer: patch (space-to-depth) stems and residual 3x3
conv blocks that all run at code resolution.

Why not the usual VQGAN pyramid (strided convs and residual blocks at every resolution)? On a small CPU it learns
slowly: the pyramid spends its FLOPs at full resolution on thin, deep stacks. Here every pixel of an
f x f patch reaches a wide feature vector through one 1x1 conv (PixelUnshuffle), the 3x3 convs mix neighbouring
patches (an object spans two or three), and the decoder paints each patch back with a 1x1 conv + PixelShuffle.

Normalisation never mixes images (no BatchNorm), so encoding one image or a batch gives the same codes. Its kind
(`NORMS`) decides whether a code is local: GroupNorm ("group", the shipped tokenizer) normalises each group over the
whole image, so its statistics, and with them every code, shift when any object changes (even codes far outside
the convs' reach; `models/shapes/vq/MODEL_CARD.md`);
"channel" normalises each position over its channels alone, so a code depends only on the pixels its convs see.
Local codes matter to editing and infilling: what an edit leaves alone keeps its codes, so copying the source (and
hiding a region from the infill prompt) means what it says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from cm3leon.tokenizers.image import ImageTokenizerConfig

NORMS: tuple[str, ...] = ("group", "channel")
NORM_EPS = 1e-6


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each position (B, C, H, W): no statistic crosses positions or images."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, NORM_EPS)
        return normed.permute(0, 3, 1, 2)


def norm_layer(channels: int, groups: int, kind: str = "group") -> nn.Module:
    """The normalisation `kind` names (`NORMS`); `groups` only matters to GroupNorm."""
    if kind == "channel":
        return ChannelNorm(channels)
    if kind != "group":
        raise ValueError(f"unknown norm {kind!r}; choose from {NORMS}")
    # Narrow layers cannot be split into `groups`; use the largest divisor so tiny test models still build.
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=NORM_EPS)


class ResidualConv(nn.Module):
    """x + conv3x3(SiLU(GroupNorm(x))): a pre-activation residual unit that keeps the width."""

    def __init__(self, channels: int, norm_groups: int, norm: str = "group") -> None:
        super().__init__()
        self.norm = norm_layer(channels, norm_groups, norm)
        self.act = nn.SiLU()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.act(self.norm(x)))


class Encoder(nn.Module):
    """Image (B, C, H, W) -> latent (B, code_dim, H/f, W/f), f = the config's `downsample_factor`."""

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        patch, width, groups, norm = config.downsample_factor, config.width, config.norm_groups, config.norm
        self.layers = nn.Sequential(
            nn.PixelUnshuffle(patch),
            nn.Conv2d(config.image_channels * patch * patch, width, 1),
            *(ResidualConv(width, groups, norm) for _ in range(config.encoder_blocks)),
            norm_layer(width, groups, norm),
            nn.SiLU(),
            nn.Conv2d(width, config.code_dim, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class Decoder(nn.Module):
    """Quantised latent (B, code_dim, h, w) -> image (B, C, h*f, w*f).

    With `refine_blocks`, the features are then shuffled up to twice the code resolution `refine_levels` times
    (`refine_width` channels at the first level, half as many at each next one; each position then paints an
    f / 2^levels patch) and refined by `refine_blocks` residual 3x3 units at every level. One level is cheap
    and lets outlines cross patch borders; `log2(f)` levels reach full resolution, where a 3x3 conv places every
    edge pixel itself: the FLOPs that sharp small stars and letters need, affordable when training on a GPU.
    """

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        patch, width, groups, norm = config.downsample_factor, config.width, config.norm_groups, config.norm
        refine_blocks, refine_levels = config.refine_blocks, config.refine_levels
        layers: list[nn.Module] = [
            nn.Conv2d(config.code_dim, width, 3, padding=1),
            *(ResidualConv(width, groups, norm) for _ in range(config.decoder_blocks)),
            norm_layer(width, groups, norm),
            nn.SiLU(),
        ]
        if refine_blocks:
            if patch % (2**refine_levels):
                raise ValueError(f"{refine_levels} refine levels do not divide a {patch}-pixel patch")
            level_width = config.refine_width
            for _ in range(refine_levels):
                layers += [
                    nn.Conv2d(width, level_width * 4, 1),
                    nn.PixelShuffle(2),
                    *(ResidualConv(level_width, groups, norm) for _ in range(refine_blocks)),
                    norm_layer(level_width, groups, norm),
                    nn.SiLU(),
                ]
                width, patch, level_width = level_width, patch // 2, max(level_width // 2, 1)
        layers += [nn.Conv2d(width, config.image_channels * patch * patch, 1), nn.PixelShuffle(patch)]
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.layers(latents)
