"""What every decoder evaluation needs first: the checkpoint, its world, its held-out scenes, and thread control.

A checkpoint directory (cm3leon.checkpoint) holds the model, vocabulary and VQ tokenizer but not the world it
was trained on. `training.json` (written by `cm3leon train pretrain`) records the data config, which names the
world; without it, the world preset whose image size matches the VQ tokenizer is the one the data presets use.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from cm3leon.checkpoint import load_checkpoint
from cm3leon.data.world import Scene, Split, World, WorldConfig
from cm3leon.model import Transformer
from cm3leon.objectives.cm3 import CM3Config
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.vocab import Vocabulary
from cm3leon.training.pretrain import SUMMARY_FILE
from cm3leon.training.pretrain_data import PretrainDataConfig

# Data presets tried, in order, when a checkpoint has no training.json: the one whose world matches the VQ.
FALLBACK_DATA_PRESETS: tuple[str, ...] = ("shapes", "tiny")


@dataclass
class EvalCheckpoint:
    """A loaded checkpoint with everything the evaluations read from it."""

    directory: Path
    model: Transformer
    vocab: Vocabulary
    image_tokenizer: ImageTokenizer
    data_config: PretrainDataConfig

    @property
    def world(self) -> WorldConfig:
        return self.data_config.world()


def _recorded_data_config(directory: Path) -> PretrainDataConfig | None:
    """The data config `cm3leon train pretrain` recorded in DIR/training.json, if there is one."""
    path = directory / SUMMARY_FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text()).get("data_config")
    if not raw:
        return None
    known = {field.name for field in dataclasses.fields(PretrainDataConfig)}
    values = {key: value for key, value in raw.items() if key in known}
    values["cm3"] = CM3Config(**values.get("cm3", {}))
    return PretrainDataConfig(**values)


def load_eval_checkpoint(directory: Path | str, device: str = "cpu") -> EvalCheckpoint:
    """Load a complete model directory for evaluation; it must contain the VQ tokenizer (`vq/`)."""
    directory = Path(directory)
    model, vocab, image_tokenizer = load_checkpoint(directory, device=device)
    if image_tokenizer is None:
        raise ValueError(f"{directory} has no vq/ image tokenizer: generation metrics need one")
    data_config = checkpoint_data_config(directory, model.config.max_seq_len, image_tokenizer.config.image_size)
    return EvalCheckpoint(directory, model.eval(), vocab, image_tokenizer, data_config)


def checkpoint_data_config(directory: Path, seq_len: int, image_size: int) -> PretrainDataConfig:
    """The data config (hence the world) a model directory was trained on: its training.json, else the fallback
    preset whose world has the VQ's image size. Shared by the evaluations and the serving engine."""
    data_config = _recorded_data_config(Path(directory))
    if data_config is None:
        candidates = [PretrainDataConfig.preset(p, seq_len=seq_len) for p in FALLBACK_DATA_PRESETS]
        matching = [c for c in candidates if c.world().image_size == image_size]
        if not matching:
            raise ValueError(f"no world preset has the VQ tokenizer's image size {image_size}")
        data_config = matching[0]
    if data_config.world().image_size != image_size:
        raise ValueError(f"world images are {data_config.world().image_size}px, the VQ expects {image_size}")
    return data_config


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


def request_seed(seed: int, index: int) -> int:
    """The sampling seed of the `index`-th request of an evaluation: reproducible, distinct per request."""
    return int.from_bytes(random.Random(f"{seed}:{index}").randbytes(7), "big")
