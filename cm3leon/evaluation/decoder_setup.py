"""What every decoder evaluation needs besides its `ModelBundle`: its held-out scenes, and thread control."""

from __future__ import annotations

import random

import torch

from cm3leon.data.world import Scene, Split, World, WorldConfig


def set_threads(threads: int | None) -> None:
    """Use `threads` intra-op threads (None: leave torch's setting alone). On a shared 2-core machine one thread
    decodes ~10x faster than two fighting with another process, so evaluation commands expose this."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def eval_scenes(world: WorldConfig, split: Split | str, n: int, seed: int) -> list[Scene]:
    """`n` shapes scenes of `split`, a fixed function of (seed, split, n): object counts cycle 1..max_objects,
    so single- and multi-object accuracies rest on balanced, known counts."""
    split = Split(split)
    sampler = World(world)
    rng = random.Random(f"{seed}:{split.value}:decoder-eval")
    return [sampler.sample(rng, split, num_objects=1 + i % world.max_objects, text=False) for i in range(n)]
