"""Pick the best VQ run by its evaluation: exact-scene oracle accuracy on reconstructions, then PSNR.

    python scripts/gpu/pick_vq.py RUN_DIR... -> prints the chosen run directory
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def score(run: Path) -> tuple[float, float]:
    try:
        metrics = json.loads((run / "eval.json").read_text())
    except (OSError, ValueError):
        return (-1.0, -1.0)
    return (metrics["oracle_accuracy"], metrics["psnr"])


if __name__ == "__main__":
    runs = [Path(arg) for arg in sys.argv[1:]]
    for run in runs:
        print(f"{run}: oracle, psnr = {score(run)}", file=sys.stderr)
    print(max(runs, key=score))
