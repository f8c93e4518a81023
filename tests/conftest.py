"""Suite-wide settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sft_helpers import tiny_init_checkpoint

from cm3leon.bundle import ModelBundle


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """The suite runs tiny models: on a 2-core box two intra-op threads only add waiting (measured 5-15x slower
    whenever another process is busy), so every test runs on one thread, as `make test` also asks via
    OMP_NUM_THREADS. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny model directory with random weights, one per test module (a module may define its own)."""
    return tiny_init_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def checkpoint(checkpoint_dir: Path) -> ModelBundle:
    return ModelBundle.load(checkpoint_dir, require_vq=True)
