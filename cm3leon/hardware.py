"""What the hardware can do fast: decides defaults that would otherwise be a trap on some machines.

bf16 autocast doubles matmul speed on CPUs with AVX512-BF16 or AMX, but on a CPU without them PyTorch emulates
bf16 and it is about 50x *slower* than fp32 (measured on an AVX2-only EPYC: 66 vs 1.2 GFLOP/s). So "use bf16" is
never a fixed default; it is asked of the device.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

_FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def fast_bf16_available(device: torch.device | str) -> bool:
    """True when bf16 autocast on `device` is faster than fp32 (native bf16 units), False where it is emulated."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in _cpu_flags() for flag in _FAST_BF16_CPU_FLAGS)
    return False


def resolve_bf16(requested: bool | None, device: torch.device | str) -> bool:
    """None means "whatever is fast here"; an explicit True/False is honoured."""
    return fast_bf16_available(device) if requested is None else requested
