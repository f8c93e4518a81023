"""The CLIP-style dual encoder: an image tower, a text tower, one shared normalised space, a learned temperature.

Written here rather than taken from open_clip: open_clip imports torchvision at module load, and the only
torchvision wheel that installs beside this project's torch fails to import (`operator torchvision::nms does
not exist`); letting pip resolve it instead replaces torch itself (2.13 CPU -> 2.14 with the CUDA stack). The
towers are small, and the loss needs scene-aware targets that open_clip's `ClipLoss` (one positive per row)
does not have (see `contrastive.py`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cm3leon.retrieval.config import RetrieverConfig

PIXEL_MAX = 255.0


def pixels_to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / (PIXEL_MAX / 2) - 1.0


def conv_block(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.GELU(),
    ]


class ImageEncoder(nn.Module):
    """Stride-2 conv stages (each with `stage_depths` stride-1 convs), then the flattened feature map projected
    to `embed_dim`.

    BatchNorm, as in CLIP's ResNets: it normalises each channel over the batch, so an image's background colour
    (which captions name) survives, where a per-image norm (GroupNorm, LayerNorm over channels and space)
    would subtract it; without any norm the tower learns far more slowly.
    """

    def __init__(self, config: RetrieverConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = config.image_channels
        for width, depth in zip(config.conv_channels, config.stage_depths, strict=True):
            layers += conv_block(channels, width, stride=2)
            for _ in range(depth):
                layers += conv_block(width, width, stride=1)
            channels = width
        self.convs = nn.Sequential(*layers)
        flat = channels * config.feature_grid * config.feature_grid
        self.norm = nn.LayerNorm(flat)
        self.projection = nn.Linear(flat, config.embed_dim, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """float (B, C, H, W) in [-1, 1] -> unnormalised embeddings (B, embed_dim)."""
        features = self.convs(pixels).flatten(1)  # (B, C * g * g)
        return self.projection(self.norm(features))


class TextEncoder(nn.Module):
    """A pre-LN transformer over BPE ids; a learned summary vector prepended to the tokens is read out.

    The summary slot is a parameter, not a tokenizer id, so the retriever works with the project's BPE as it
    is (no special tokens to add). Padding is masked out of attention.
    """

    def __init__(self, config: RetrieverConfig) -> None:
        super().__init__()
        width = config.text_width
        self.token_embedding = nn.Embedding(config.text_vocab_size, width)
        self.summary = nn.Parameter(torch.zeros(1, 1, width))
        self.positions = nn.Parameter(torch.zeros(1, config.max_text_tokens + 1, width))
        layer = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=config.text_heads,
            dim_feedforward=width * config.text_mlp_ratio,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors would re-pack padded batches on every eval call; padded batches are short here.
        self.layers = nn.TransformerEncoder(layer, config.text_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(width)
        self.projection = nn.Linear(width, config.embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positions, std=0.02)
        nn.init.normal_(self.summary, std=0.02)

    def forward(self, token_ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """token_ids (B, T) and padding (B, T) bool, True where padded -> unnormalised embeddings (B, embed_dim)."""
        batch, length = token_ids.shape
        hidden = torch.cat([self.summary.expand(batch, -1, -1), self.token_embedding(token_ids)], dim=1)
        hidden = hidden + self.positions[:, : length + 1]
        summary_padding = torch.zeros(batch, 1, dtype=torch.bool, device=padding.device)
        hidden = self.layers(hidden, src_key_padding_mask=torch.cat([summary_padding, padding], dim=1))
        return self.projection(self.final_norm(hidden[:, 0]))


class DualEncoder(nn.Module):
    def __init__(self, config: RetrieverConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.text_encoder = TextEncoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(config.init_logit_scale))

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """float (B, C, H, W) in [-1, 1] -> L2-normalised (B, embed_dim), fp32."""
        return F.normalize(self.image_encoder(pixels).float(), dim=-1)

    def encode_texts(self, token_ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """token ids and padding (B, T) -> L2-normalised (B, embed_dim), fp32."""
        return F.normalize(self.text_encoder(token_ids, padding).float(), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), capped as in CLIP so the temperature cannot collapse."""
        return self.logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()
