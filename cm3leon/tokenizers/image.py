"""The VQ image tokenizer: images <-> grids of discrete codes that the decoder-only model reads and writes.

A convolutional encoder maps an image to a grid of vectors (one per `downsample_factor` x `downsample_factor`
patch), a `VectorQuantize` codebook snaps each to its nearest code (EMA codebook updates, dead-code restarts), and a
convolutional decoder paints the image back. The quantizer always runs in fp32: its distances and EMA statistics
are what bf16 would quietly corrupt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from vector_quantize_pytorch import VectorQuantize

from cm3leon.presets import Presets
from cm3leon.tokenizers.conv_blocks import NORMS, Decoder, Encoder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PIXEL_MAX = 255.0
FINGERPRINT_HEX_CHARS = 16
# The submodules whose weights decide which code an image gets (the decoder only draws codes back).
CODE_DETERMINING_MODULES = ("encoder", "quantizer")
# Config fields added after tokenizers shipped, and the value the shipped ones implicitly had.
LATER_FIELDS: dict[str, object] = {"norm": "group"}
# The `shapes` tokenizer's full-resolution decoder (three refine levels, 8 -> 64 px): the patch-painting decoder
# of `shapes-patch` cannot draw a small star's outline inside one 8x8 patch with a linear 1x1 head.
_SHAPES_DECODER: dict[str, Any] = dict(encoder_blocks=2, refine_blocks=2, refine_width=128, refine_levels=3)


@dataclass(frozen=True)
class ImageTokenizerConfig(Presets):
    """Shape and training constants of one image tokenizer. Presets: `tiny` (tests), `shapes`, `256px` (paper)."""

    image_size: int = 64
    image_channels: int = 3
    # Pixels per code along each side: a code stands for one downsample_factor x downsample_factor patch.
    downsample_factor: int = 8
    # Channels of the conv stacks, which all run at code resolution (see conv_blocks.py for why).
    width: int = 256
    # Residual 3x3 conv units on each side of the quantizer. The decoder has to draw pixel-exact outlines from
    # codes, the encoder only to tell patches apart, so the decoder gets more.
    encoder_blocks: int = 1
    decoder_blocks: int = 3
    # Residual units per refine level at the end of the decoder; each level doubles the resolution (see
    # conv_blocks.Decoder). `refine_width` channels at the first level, halved at each next one.
    refine_blocks: int = 0
    refine_width: int = 64
    refine_levels: int = 1
    norm_groups: int = 32
    # "group" (GroupNorm over the image: the shipped shapes tokenizer; its codes are not local) or "channel" (each
    # position over its channels: a code depends only on the pixels the convs reach). See conv_blocks.NORMS.
    norm: str = "group"
    codebook_size: int = 512
    code_dim: int = 32
    # EMA decay of the codebook's cluster sizes and sums (0.95: a code's statistics follow ~20 recent batches).
    ema_decay: float = 0.95
    # A code whose EMA count of uses per batch falls below this is restarted on a random encoder output.
    # About 0.1 keeps nearly every code of a 512-entry book alive on this world; much lower lets codes die.
    dead_code_threshold: float = 0.1
    commitment_weight: float = 0.25
    # k-means initialisation of the codebook on the first quantised batch (after the autoencoder warmup).
    kmeans_init: bool = True
    use_cosine_similarity: bool = False
    # Reconstruction loss: "l2" (what PSNR measures) or "l1", plus a weight on an L1 loss between image
    # gradients (horizontal and vertical differences), which rewards sharp outlines over a blur.
    reconstruction_loss: str = "l2"
    edge_loss_weight: float = 0.5

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # An untrained tiny tokenizer must still map scenes to varied codes (other components' tests use one);
        # a k-means codebook is all zeros until its first training batch, hence no kmeans_init.
        "tiny": dict(
            image_size=32, downsample_factor=4, width=32, encoder_blocks=1, decoder_blocks=1, norm_groups=8,
            codebook_size=32, code_dim=8, ema_decay=0.9, dead_code_threshold=0.05, kmeans_init=False,
        ),
        "shapes": _SHAPES_DECODER,
        # `shapes` with local codes (per-position channel norm): an edit or a hidden region leaves the other
        # codes as they were, which editing and infilling need (its status: models/shapes/vq/MODEL_CARD.md).
        "shapes-local": {**_SHAPES_DECODER, "norm": "channel"},
        # The first shipped tokenizer's shape: every conv at code resolution, faster to train on a CPU.
        "shapes-patch": {},
        # The paper's tokenizer shape (Make-A-Scene style): 256x256 -> 32x32 codes from an 8192-entry book.
        "256px": dict(
            image_size=256, width=512, encoder_blocks=4, decoder_blocks=8, codebook_size=8192, code_dim=256,
            ema_decay=0.99,
        ),
    }

    def __post_init__(self) -> None:
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size {self.image_size} is not a multiple of {self.downsample_factor}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.reconstruction_loss not in ("l1", "l2"):
            raise ValueError(f"reconstruction_loss must be l1 or l2, got {self.reconstruction_loss!r}")

    @property
    def grid(self) -> int:
        """Codes per side of the code grid."""
        return self.image_size // self.downsample_factor

    @property
    def codes_per_image(self) -> int:
        return self.grid * self.grid

    def to_json(self) -> str:
        """The config file's text. Fields added after tokenizers shipped are left out while they hold the value
        those tokenizers had (`LATER_FIELDS`), so an old tokenizer's file and fingerprint stay byte for byte."""
        fields_ = {k: v for k, v in asdict(self).items() if LATER_FIELDS.get(k, object()) != v}
        return json.dumps(fields_, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ImageTokenizerConfig:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown image tokenizer config fields: {sorted(unknown)}")
        return cls(**raw)


class TokenizerOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, C, H, W) in about [-1, 1]
    codes: torch.Tensor | None  # (B, grid, grid) int64; None when the codebook was bypassed
    commitment_loss: torch.Tensor  # scalar, already weighted by commitment_weight


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) arrays -> float (B, C, H, W) in [-1, 1]; float tensors pass through unchanged."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        if images.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) float tensor, got shape {tuple(images.shape)}")
        return images
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.ndim == 4:
        # A uint8 batch already in torch (e.g. an image bank kept on the GPU): convert where it lives.
        return images.permute(0, 3, 1, 2).float() / (PIXEL_MAX / 2) - 1.0
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4:
        raise ValueError(f"expected uint8 images (B, H, W, C), got {array.dtype} {array.shape}")
    # Converted in numpy: the copy is writable even when the request's array is not (torch warns on read-only views).
    pixels = torch.from_numpy(array.astype(np.float32)).permute(0, 3, 1, 2)
    return pixels / (PIXEL_MAX / 2) - 1.0


def tensor_to_images(pixels: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C), rounded and clipped."""
    scaled = ((pixels.float().clamp(-1.0, 1.0) + 1.0) * (PIXEL_MAX / 2)).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def dead_code_ratio(threshold: float, codebook_size: int) -> float:
    """The library's `dead_code_threshold_ratio` for our config's threshold, converted as the library converts its
    deprecated `threshold_ema_dead_code` (a count >= 1 is divided by the codebook size; below 1 it is the ratio),
    so every saved config keeps its meaning without the library's deprecation warning."""
    return threshold / codebook_size if threshold >= 1 else threshold


class ImageTokenizer(nn.Module):
    """Encoder + VQ codebook + decoder. `encode`/`decode` are the inference API; `forward` is for training."""

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantize(
            dim=config.code_dim,
            codebook_size=config.codebook_size,
            decay=config.ema_decay,
            commitment_weight=config.commitment_weight,
            dead_code_threshold_ratio=dead_code_ratio(config.dead_code_threshold, config.codebook_size),
            kmeans_init=config.kmeans_init,
            use_cosine_sim=config.use_cosine_similarity,
            accept_image_fmap=True,
        )
        self.decoder = Decoder(config)
        # Uses of each code since the last `reset_usage()`: the trainer logs usage and perplexity from it.
        self.register_buffer("usage_counts", torch.zeros(config.codebook_size, dtype=torch.long), persistent=False)

    # ----- training -----

    def quantize(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Snap latents to codes in fp32, whatever autocast the caller runs under."""
        with torch.autocast(device_type=latents.device.type, enabled=False):
            quantized, codes, commitment_loss = self.quantizer(latents.float())
        if self.training:
            self.usage_counts += torch.bincount(codes.flatten(), minlength=self.config.codebook_size)
        return quantized, codes, commitment_loss

    def forward(self, images: torch.Tensor, quantize: bool = True) -> TokenizerOutput:
        """Reconstruct `images`. `quantize=False` bypasses the codebook (a plain autoencoder, codes None): the
        trainer's warmup, so the codebook is first fitted to features that already describe colour and shape."""
        latents = self.encoder(images)
        if not quantize:
            return TokenizerOutput(self.decoder(latents), None, latents.new_zeros(()))
        quantized, codes, commitment_loss = self.quantize(latents)
        return TokenizerOutput(self.decoder(quantized), codes, commitment_loss)

    def reset_usage(self) -> None:
        self.usage_counts.zero_()

    def codebook_usage(self) -> float:
        """Fraction of the codebook used since the last reset."""
        return float((self.usage_counts > 0).float().mean())

    def codebook_perplexity(self) -> float:
        """exp(entropy) of code use since the last reset: the effective number of codes in use."""
        total = self.usage_counts.sum()
        if total == 0:
            return 0.0
        probabilities = self.usage_counts[self.usage_counts > 0].double() / total
        return float(torch.exp(-(probabilities * probabilities.log()).sum()))

    # ----- inference -----

    @torch.inference_mode()
    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) numpy or float (B, 3, H, W) in [-1, 1] -> codes LongTensor (B, grid, grid)."""
        latents = self.encoder(images_to_tensor(images).to(self._device)).float()
        return self.nearest_codes(latents)

    def nearest_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """The codebook's nearest neighbour of each latent vector, (B, D, h, w) -> (B, h, w).

        Looked up directly rather than through the quantizer's forward, which would also update the EMA
        codebook in training mode and k-means-initialise an untrained one: encoding must never change the model.
        """
        batch, dim, height, width = latents.shape
        vectors = latents.permute(0, 2, 3, 1).reshape(-1, dim)
        codebook = self.quantizer.codebook.float()
        if self.config.use_cosine_similarity:
            scores = F.normalize(vectors, dim=-1) @ F.normalize(codebook, dim=-1).T
            codes = scores.argmax(dim=-1)
        else:
            codes = torch.cdist(vectors, codebook).argmin(dim=-1)
        return codes.view(batch, height, width)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor | np.ndarray) -> np.ndarray:
        """Codes (B, grid, grid) or (B, grid*grid) -> uint8 images (B, H, W, 3)."""
        codes = torch.as_tensor(codes, dtype=torch.long, device=self._device)
        grid = self.config.grid
        if codes.ndim == 2 and codes.shape[1] == self.config.codes_per_image:
            codes = codes.view(-1, grid, grid)
        if codes.ndim != 3 or codes.shape[1:] != (grid, grid):
            raise ValueError(f"expected codes (B, {grid}, {grid}) or (B, {grid * grid}), got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.config.codebook_size})")
        latents = self.quantizer.get_output_from_indices(codes)  # (B, code_dim, grid, grid)
        # GroupNorm and convs behave the same in train and eval mode, so no mode switch is needed here.
        return tensor_to_images(self.decoder(latents))

    def fingerprint(self) -> str:
        """A short hash of the config and of what maps pixels to codes (encoder weights, codebook buffers):
        equal iff the codes are equal.

        Stored codes (corpus caches, a retrieval memory's inline codes) carry it, so codes made by another
        tokenizer are never silently read as this one's. The pixel decoder is left out on purpose: fine-tuning
        it alone (`train vq --freeze-codes`) redraws images better without invalidating any stored code or any
        decoder model trained on them.
        """
        digest = hashlib.sha256(self.config.to_json().encode())
        code_parts = tuple(f"{part}." for part in CODE_DETERMINING_MODULES)
        for name, tensor in sorted(self.state_dict().items()):
            if not name.startswith(code_parts):
                continue
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:FINGERPRINT_HEX_CHARS]

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # ----- persistence -----

    def save_pretrained(self, directory: Path | str) -> Path:
        """Write `config.json` + `model.safetensors` (weights and codebook buffers) to `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(self.config.to_json())
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        return directory

    @classmethod
    def from_pretrained(cls, directory: Path | str, device: str | torch.device = "cpu") -> ImageTokenizer:
        """Load a tokenizer written by `save_pretrained`, in eval mode."""
        directory = Path(directory)
        config = ImageTokenizerConfig.from_json((directory / CONFIG_FILE).read_text())
        model = cls(config)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model.to(device).eval()
