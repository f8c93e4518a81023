"""Pack a run's results for the trip back from the GPU machine: one tar per stage, weights in bf16.

The device tool returns at most 8 files of 16 MiB: a decoder's fp32 weights (20 MB) do not fit, its bf16 copy
does, and `Transformer.from_pretrained` loads bf16 weights into fp32 modules unchanged (every bf16 value is an
fp32 value). Checkpoints (optimizer state) and caches stay behind; the VQ is packed once, not in every run.

    python scripts/gpu/pack.py RUN_DIR OUT.tar [--keep-fp32]
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SKIPPED_PARTS = {"checkpoint", "cache", "vq"}


def to_bf16(path: Path, target: Path) -> None:
    state = load_file(str(path))
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}, str(target),
              metadata={"format": "pt"})


def pack(run_dir: Path, tar_path: Path, keep_fp32: bool) -> None:
    with tempfile.TemporaryDirectory() as scratch, tarfile.open(tar_path, "w") as tar:
        for path in sorted(run_dir.rglob("*")):
            relative = path.relative_to(run_dir)
            if path.is_dir() or SKIPPED_PARTS & set(relative.parts[:-1]):
                continue
            source = path
            if path.name == "model.safetensors" and not keep_fp32:
                source = Path(scratch) / "model.safetensors"
                to_bf16(path, source)
            tar.add(source, arcname=str(Path(run_dir.name) / relative))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("tar_path", type=Path)
    parser.add_argument("--keep-fp32", action="store_true")
    args = parser.parse_args()
    pack(args.run_dir, args.tar_path, args.keep_fp32)
    print(f"{args.tar_path}: {args.tar_path.stat().st_size / 2**20:.1f} MiB")
