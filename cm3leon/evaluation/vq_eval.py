"""Evaluating an image tokenizer on TEST-split scenes: `cm3leon eval vq --checkpoint DIR --json F`.

What the decoder needs from its tokenizer is that a code grid keeps the whole scene: every object's shape,
colour, size and cell, each word, each segmentation class. So besides PSNR this suite parses reconstructions
with the oracle (the same judge as every generation metric) and counts exact scenes, decodes reconstructed
segmentation pictures back to class maps, and reads reconstructed words.

Metrics (all on the test split):
    psnr                          mean per-image PSNR (dB) of reconstructed shapes scenes
    psnr_segmentation, psnr_text  the same for segmentation pictures and word scenes
    oracle_accuracy               fraction of reconstructed scenes the oracle parses to exactly the true scene
    oracle_accuracy_originals     the same on the original renders (the oracle's own ceiling; should be 1)
    oracle.*                      the oracle's per-attribute scores on reconstructions (shape, colour, ...)
    codebook_usage                fraction of the codebook used by all test pictures; codebook_perplexity
    segmentation_pixel_accuracy   class map of reconstructed segmentation pictures vs the exact one
    word_accuracy, text_exact_accuracy   word read from reconstructed word scenes; word, colour and background
    codes_changed_by_removal      with one object removed from each scene, the fraction of codes that change
                                  outside its cell, and beyond the encoder convs' reach of it (0 for a local
                                  tokenizer; GroupNorm's image-wide statistics make it large, and every edit
                                  then rewrites codes far from what it touches)
    encode_images_per_s, decode_images_per_s
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cm3leon.data.grid import save_grid
from cm3leon.data.oracle import Oracle, aggregate_scores, score_scene
from cm3leon.data.render import render, segmentation_from_image
from cm3leon.data.world import Scene, Split, World, WorldConfig
from cm3leon.tokenizers.image import PIXEL_MAX, ImageTokenizer


@dataclass(frozen=True)
class VQEvalConfig:
    """How many test scenes of each kind, batching, and what the picture grid shows."""

    n: int = 500  # shapes scenes (each also gives a segmentation picture)
    text_ratio: float = 0.2  # word scenes, as a fraction of n
    batch_size: int = 100
    grid_examples: int = 8
    world_preset: str = "shapes"
    split: Split = Split.TEST
    seed: int = 0

    @property
    def n_text(self) -> int:
        return max(1, round(self.n * self.text_ratio))


def psnr_per_image(original: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """PSNR (dB) of each uint8 image pair; identical images count as 100 dB rather than infinity."""
    diff = original.astype(np.float64) - reconstruction.astype(np.float64)
    mse = (diff**2).reshape(len(original), -1).mean(axis=1)
    return np.where(mse > 0, 10 * np.log10(PIXEL_MAX**2 / np.maximum(mse, 1e-12)), 100.0)


@dataclass
class RoundTrip:
    codes: np.ndarray  # (N, grid, grid)
    reconstructions: np.ndarray  # (N, H, W, 3) uint8
    encode_seconds: float
    decode_seconds: float


def round_trip(tokenizer: ImageTokenizer, images: np.ndarray, batch_size: int) -> RoundTrip:
    """Encode then decode every image in batches, timing the two halves separately."""
    codes, reconstructions, encode_seconds, decode_seconds = [], [], 0.0, 0.0
    for start in range(0, len(images), batch_size):
        started = time.perf_counter()
        batch_codes = tokenizer.encode(images[start : start + batch_size])
        encoded = time.perf_counter()
        reconstructions.append(tokenizer.decode(batch_codes))
        decode_seconds += time.perf_counter() - encoded
        encode_seconds += encoded - started
        codes.append(batch_codes.cpu().numpy())
    return RoundTrip(np.concatenate(codes), np.concatenate(reconstructions), encode_seconds, decode_seconds)


def _usage(codes: np.ndarray, codebook_size: int) -> tuple[float, float]:
    counts = np.bincount(codes.reshape(-1), minlength=codebook_size)
    probabilities = counts[counts > 0] / counts.sum()
    return float((counts > 0).mean()), float(math.exp(-(probabilities * np.log(probabilities)).sum()))


def _encode(tokenizer: ImageTokenizer, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Codes (N, grid, grid) of uint8 images, in batches (no pixel decoding: only the codes are compared)."""
    return np.concatenate([
        tokenizer.encode(images[start : start + batch_size]).cpu().numpy()
        for start in range(0, len(images), batch_size)
    ])


def code_distances_from_box(grid: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """(grid, grid) code distances (in codes, max over axes) from the code box (col0, row0, col1, row1), 0 inside."""
    col0, row0, col1, row1 = box
    index = np.arange(grid)
    rows = np.maximum(np.maximum(row0 - index, index - (row1 - 1)), 0)
    cols = np.maximum(np.maximum(col0 - index, index - (col1 - 1)), 0)
    return np.maximum(rows[:, None], cols[None, :])


def codes_changed_by_removal(
    tokenizer: ImageTokenizer, world_config: WorldConfig, scenes: list[Scene], seed: int, batch_size: int
) -> dict[str, float]:
    """Remove one random object of each scene and compare the two code grids outside the object's cell: all of
    it, and only the codes beyond the encoder's reach (`encoder_blocks` residual 3x3 convs, one code each), each
    pooled over codes."""
    rng = random.Random(f"{seed}:vq-locality")
    f, grid, reach = tokenizer.config.downsample_factor, tokenizer.config.grid, tokenizer.config.encoder_blocks
    pairs = [(scene, rng.choice(scene.objects)) for scene in scenes if scene.objects]
    if not pairs:
        raise ValueError("no scene has an object to remove")
    before = np.stack([render(scene, world_config).image for scene, _ in pairs])
    after = np.stack([
        render(scene.with_objects(tuple(o for o in scene.objects if o is not gone)), world_config).image
        for scene, gone in pairs
    ])
    changed = _encode(tokenizer, before, batch_size) != _encode(tokenizer, after, batch_size)
    outside, beyond = [], []
    for flips, (_, gone) in zip(changed, pairs, strict=True):
        x0, y0, x1, y1 = world_config.cell_box(gone.cell)
        distance = code_distances_from_box(grid, (x0 // f, y0 // f, -(-x1 // f), -(-y1 // f)))
        outside.extend(flips[distance > 0].tolist())
        beyond.extend(flips[distance > reach].tolist())  # none when the cell is central: every code is in reach
    return {"outside_cell": float(np.mean(outside)), "beyond_encoder_reach": float(np.mean(beyond)) if beyond else 0.0}


def _scores(parse: Callable[[np.ndarray], Scene], images: np.ndarray, scenes: list[Scene]) -> list[dict[str, Any]]:
    return [score_scene(parse(image), scene) for image, scene in zip(images, scenes, strict=True)]


def evaluate_vq(tokenizer: ImageTokenizer, config: VQEvalConfig, grid_path: Path | None = None) -> dict[str, Any]:
    """All metrics of the module docstring; with `grid_path`, also a PNG of originals vs reconstructions."""
    world_config = WorldConfig.preset(config.world_preset)
    if world_config.image_size != tokenizer.config.image_size:
        raise ValueError(
            f"world images are {world_config.image_size}px, the tokenizer expects {tokenizer.config.image_size}px"
        )
    world, oracle = World(world_config), Oracle(world_config)
    rng = random.Random(f"{config.seed}:vq-eval")
    scenes = [world.sample(rng, config.split, text=False) for _ in range(config.n)]
    word_scenes = [world.sample(rng, config.split, text=True) for _ in range(config.n_text)]
    renders = [render(scene, world_config) for scene in scenes]
    word_renders = [render(scene, world_config) for scene in word_scenes]
    images = np.stack([r.image for r in renders])
    segmentations = np.stack([r.segmentation_image for r in renders])
    words = np.stack([r.image for r in word_renders])

    all_images = np.concatenate([images, segmentations, words])
    trip = round_trip(tokenizer, all_images, config.batch_size)
    n = config.n
    image_recon, segmentation_recon, word_recon = np.split(trip.reconstructions, [n, 2 * n])

    psnr = psnr_per_image(images, image_recon)
    scene_scores = _scores(lambda image: oracle.parse(image, expect_text=False), image_recon, scenes)
    original_scores = _scores(lambda image: oracle.parse(image, expect_text=False), images, scenes)
    word_scores = _scores(lambda image: oracle.parse(image, expect_text=True), word_recon, word_scenes)
    class_maps = np.stack([segmentation_from_image(image, world_config) for image in segmentation_recon])
    true_maps = np.stack([r.segmentation for r in renders])
    usage, perplexity = _usage(trip.codes, tokenizer.config.codebook_size)

    metrics: dict[str, Any] = {
        "psnr": float(psnr.mean()),
        "psnr_segmentation": float(psnr_per_image(segmentations, segmentation_recon).mean()),
        "psnr_text": float(psnr_per_image(words, word_recon).mean()),
        "oracle_accuracy": float(np.mean([s["exact"] for s in scene_scores])),
        "oracle_accuracy_originals": float(np.mean([s["exact"] for s in original_scores])),
        "oracle": aggregate_scores(scene_scores),
        "codebook_usage": usage,
        "codebook_perplexity": perplexity,
        "segmentation_pixel_accuracy": float((class_maps == true_maps).mean()),
        "word_accuracy": float(np.mean([s["word"] for s in word_scores])),
        "text_exact_accuracy": float(np.mean([s["exact"] for s in word_scores])),
        "codes_changed_by_removal": codes_changed_by_removal(
            tokenizer, world_config, scenes, config.seed, config.batch_size
        ),
        "encode_images_per_s": len(all_images) / trip.encode_seconds,
        "decode_images_per_s": len(all_images) / trip.decode_seconds,
        "n_scenes": n,
        "n_word_scenes": config.n_text,
        "codes_per_image": tokenizer.config.codes_per_image,
        "codebook_size": tokenizer.config.codebook_size,
        "torch_threads": torch.get_num_threads(),
    }
    if grid_path is not None:
        _save_examples(grid_path, scenes, images, image_recon, psnr, scene_scores, segmentations,
                       segmentation_recon, word_scenes, words, word_recon, config.grid_examples)
    return metrics


def _save_examples(
    path: Path,
    scenes: list[Scene],
    images: np.ndarray,
    image_recon: np.ndarray,
    psnr: np.ndarray,
    scene_scores: list[dict[str, Any]],
    segmentations: np.ndarray,
    segmentation_recon: np.ndarray,
    word_scenes: list[Scene],
    words: np.ndarray,
    word_recon: np.ndarray,
    count: int,
) -> None:
    """Rows of original | reconstruction | segmentation | its reconstruction; failures first, then word scenes."""

    failures = [i for i, s in enumerate(scene_scores) if not s["exact"]]
    shown = (failures + [i for i in range(len(scenes)) if i not in set(failures)])[:count]
    rows = []
    for i in shown:
        verdict = "oracle ok" if scene_scores[i]["exact"] else "oracle WRONG"
        caption = ", ".join(o.describe() for o in scenes[i].objects) + f" on {scenes[i].background}"
        rows.append([
            (images[i], caption),
            (image_recon[i], f"{verdict}, {psnr[i]:.1f} dB"),
            (segmentations[i], "segmentation"),
            (segmentation_recon[i], "reconstructed"),
        ])
    word_row = []
    for i in range(min(count // 2, len(word_scenes))):
        label = f"{word_scenes[i].word} ({word_scenes[i].word_colour})"
        word_row += [(words[i], label), (word_recon[i], "reconstructed")]
    if word_row:
        rows.append(word_row)
    save_grid(rows, path, title="VQ round trip on test scenes: original vs reconstruction")
