"""Suite-wide settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """The suite runs tiny models: on a 2-core box two intra-op threads only add waiting (measured 5-15x slower
    whenever another process is busy), so every test runs on one thread, as `make test` also asks via
    OMP_NUM_THREADS. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
