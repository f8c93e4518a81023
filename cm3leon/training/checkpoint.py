"""Generic training-checkpoint helpers: weights, optimizer, scalars and RNG states on disk; a JSON-lines log.

A checkpoint directory holds everything an exact resume needs:

    model.safetensors   the module's state_dict (weights and buffers, e.g. a VQ codebook)
    config.json         the model's config as the caller serialised it (so the directory also loads as a model)
    optimizer.pt        the optimizer's state_dict (moments, step counts)
    state.json          the trainer's scalars (step, schedule horizon, elapsed time, data position, ...)
    rng.pt              torch and Python RNG states

It is written to a sibling `*.partial` directory and swapped in by rename, so a run killed mid-save keeps its
previous checkpoint. Nothing here knows which model is being trained.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
RNG_FILE = "rng.pt"


def save_weights(module: nn.Module, path: Path) -> None:
    """A module's state_dict as safetensors (contiguous CPU copies; safetensors refuses views)."""
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}
    save_file(state, str(path))


def load_weights(module: nn.Module, path: Path) -> None:
    """Load safetensors weights into `module` in place, strictly (a missing or extra tensor is an error)."""
    device = next(iter(module.state_dict().values())).device
    module.load_state_dict(load_file(str(path), device=str(device)))


def capture_rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def write_checkpoint(
    directory: Path, write_model: Callable[[Path], None], optimizer: torch.optim.Optimizer, state_json: str
) -> Path:
    """Write a complete checkpoint to `directory` atomically (a partial write never replaces a good one): the model
    by `write_model(folder)`, then the optimizer, the RNG states and the scalars. Every trainer saves through here."""
    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    previous = directory.with_name(directory.name + ".previous")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_model(partial)
    torch.save(optimizer.state_dict(), partial / OPTIMIZER_FILE)
    torch.save(capture_rng_states(), partial / RNG_FILE)
    (partial / STATE_FILE).write_text(state_json)
    if directory.exists():
        shutil.rmtree(previous, ignore_errors=True)
        directory.rename(previous)
    partial.rename(directory)
    shutil.rmtree(previous, ignore_errors=True)
    return directory


def save_training_checkpoint(
    directory: Path,
    model: nn.Module,
    config_json: str,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
) -> Path:
    """A checkpoint of a module saved with its config JSON. `state` must be JSON-serialisable."""

    def write_model(folder: Path) -> None:
        save_weights(model, folder / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text(config_json)

    return write_checkpoint(directory, write_model, optimizer, json.dumps(dict(state), indent=2) + "\n")


def find_checkpoint(directory: Path) -> Path | None:
    """The checkpoint to resume from: `directory`, or its `.previous` if a crash hit between the two renames."""
    directory = Path(directory)
    previous = directory.with_name(directory.name + ".previous")
    for candidate in (directory, previous):
        if (candidate / STATE_FILE).exists():
            return candidate
    return None


def read_checkpoint_config(directory: Path) -> str:
    return (Path(directory) / CONFIG_FILE).read_text()


def load_training_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load weights, optimizer and RNG states in place; return the trainer's scalars."""
    directory = Path(directory)
    load_weights(model, directory / WEIGHTS_FILE)
    device = next(iter(model.state_dict().values())).device
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, map_location=device, weights_only=True))
    # Python's RNG state is a tuple of ints, which the weights-only unpickler rejects; the file is our own.
    restore_rng_states(torch.load(directory / RNG_FILE, weights_only=False))
    return json.loads((directory / STATE_FILE).read_text())


class MetricsLogger:
    """Append-only JSON lines, one object per logged step; a resumed run appends to the same file."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(dict(record)) + "\n")

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        path = Path(path)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
