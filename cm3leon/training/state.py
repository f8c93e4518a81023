"""The decoder trainer's resumable state on disk, built on the generic helpers of `checkpoint.py`.

A decoder checkpoint directory uses the generic layout (`optimizer.pt`, `state.json`, `rng.pt`, written to a
`*.partial` sibling and swapped in by rename) with one difference: the weights are written by
`Transformer.save_pretrained` (`model.safetensors` + `model_config.json`), because the decoder ties its token
embedding to its output projection and the generic `save_weights` refuses tensors that share memory. So every
checkpoint directory also loads directly with `Transformer.from_pretrained`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model
from torch import nn

from cm3leon.model import Transformer
from cm3leon.model.transformer import WEIGHTS_FILE
from cm3leon.training.checkpoint import (
    OPTIMIZER_FILE,
    RNG_FILE,
    STATE_FILE,
    MetricsLogger,
    restore_rng_states,
    write_checkpoint,
)

__all__ = ["MetricsLogger", "TrainerState", "load_training_state", "save_training_state"]


@dataclass
class TrainerState:
    """The scalars of a run. `data_position` is the next micro-batch index of rank 0 (see `BatchSource`)."""

    step: int = 0
    # Optimizer steps of the cosine schedule; None until fixed (a time-budgeted run measures its speed first).
    schedule_steps: int | None = None
    elapsed_seconds: float = 0.0
    data_position: int = 0
    tokens_seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        return cls(**json.loads(text))


def save_training_state(
    directory: Path, model: Transformer, optimizer: torch.optim.Optimizer, state: TrainerState
) -> Path:
    """Write a complete checkpoint to `directory` atomically (a partial write never replaces a good one)."""
    return write_checkpoint(directory, model.save_pretrained, optimizer, state.to_json())


def load_training_state(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> TrainerState:
    """Load weights, optimizer and RNG states in place; return the scalars."""
    load_model(model, str(directory / WEIGHTS_FILE), device=str(device))
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, map_location=device, weights_only=True))
    # Python's RNG state is a tuple of ints, which the weights-only unpickler rejects; the file is our own.
    restore_rng_states(torch.load(directory / RNG_FILE, weights_only=False))
    return TrainerState.from_json((directory / STATE_FILE).read_text())
