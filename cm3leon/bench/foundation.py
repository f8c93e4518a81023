"""Throughput of the foundation pieces: world rendering, the oracle, the text and image tokenizers."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cm3leon.data.language import detailed_caption
from cm3leon.data.oracle import Oracle
from cm3leon.data.render import render
from cm3leon.data.world import Split, World, WorldConfig


def _rate(work: Callable[[], int], min_seconds: float = 1.0) -> float:
    """Items per second of `work` (which returns how many items it did), repeated for at least min_seconds."""
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or done == 0:
        done += work()
    return done / elapsed


def bench_foundation(model_dir: Path | None) -> dict[str, Any]:
    config = WorldConfig.preset("shapes")
    world, oracle = World(config), Oracle(config)
    rng = random.Random(0)
    scenes = [world.sample(rng, Split.TRAIN) for _ in range(512)]
    images = np.stack([render(s, config).image for s in scenes])
    captions = [detailed_caption(s, config) for s in scenes]

    results: dict[str, Any] = {
        "world_scenes_rendered_per_s": _rate(
            lambda: len([render(world.sample(rng, Split.TRAIN), config) for _ in range(64)])
        ),
        "oracle_images_parsed_per_s": _rate(lambda: len([oracle.parse(im) for im in images[:64]])),
    }
    if model_dir is not None and (model_dir / "tokenizer.json").exists():
        from cm3leon.tokenizers.text import TextTokenizer

        text_tokenizer = TextTokenizer.load(model_dir)
        results["text_tokens_encoded_per_s"] = _rate(
            lambda: sum(len(ids) for ids in text_tokenizer.encode_batch(captions))
        )
    if model_dir is not None and (model_dir / "vq").exists():
        import torch

        from cm3leon.tokenizers.image import ImageTokenizer

        tokenizer = ImageTokenizer.from_pretrained(model_dir / "vq")
        batch = images[:64]
        codes = tokenizer.encode(batch)
        results["vq_encode_images_per_s"] = _rate(lambda: len(tokenizer.encode(batch)))
        results["vq_decode_images_per_s"] = _rate(lambda: len(tokenizer.decode(codes)))
        results["torch_threads"] = torch.get_num_threads()
    return results
