"""The client tests run against the same kind of real stack as tests/serving (its fixtures, reused)."""

from tests.serving.conftest import client, stack, target

__all__ = ["client", "stack", "target"]
