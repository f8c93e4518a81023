"""What every decoder evaluation needs first: the checkpoint, its world, its held-out scenes, and thread control.

The checkpoint and the world it was trained on come from `cm3leon.tasks.checkpoint`, as the serving engine
finds them; evaluations also need the VQ tokenizer, since every generation metric decodes images.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from cm3leon.checkpoint import load_checkpoint
from cm3leon.data.world import Scene, Split, World, WorldConfig
from cm3leon.tasks.checkpoint import LoadedCheckpoint, checkpoint_data_config

# The evaluations' name for a loaded checkpoint (every evaluation module takes one).
EvalCheckpoint = LoadedCheckpoint


def load_eval_checkpoint(directory: Path | str, device: str = "cpu") -> EvalCheckpoint:
    """Load a complete model directory for evaluation; it must contain the VQ tokenizer (`vq/`)."""
    directory = Path(directory)
    model, vocab, image_tokenizer = load_checkpoint(directory, device=device)
    if image_tokenizer is None:
        raise ValueError(f"{directory} has no vq/ image tokenizer: generation metrics need one")
    data_config = checkpoint_data_config(directory, model.config.max_seq_len, image_tokenizer.config.image_size)
    return EvalCheckpoint(directory, model.eval(), vocab, image_tokenizer, data_config)


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
