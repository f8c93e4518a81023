"""Writing evaluation results: a JSON object of metrics and a short table on stdout."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
    return flat


def format_table(title: str, metrics: Mapping[str, Any]) -> str:
    rows = _flatten(metrics)
    width = max((len(k) for k in rows), default=10)
    lines = [title, "-" * (width + 14)]
    for key, value in rows.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def write_report(title: str, metrics: Mapping[str, Any], json_path: Path | None) -> None:
    """Print the metrics as a table and, when asked, write them as one JSON object."""
    print(format_table(title, metrics))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n")
        print(f"wrote {json_path}")
