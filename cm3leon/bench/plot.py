"""A small line chart in PIL (no plotting dependency): values against concurrency, one line per side."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
PANEL = (420, 300)
MARGIN = 50


def save_sweep_plot(path: Path, sweep: Mapping[str, Mapping[str, Mapping[str, float]]], title: str) -> Path:
    """Panels: jobs/s, p50 and p99 latency (ms) against concurrency (log2 axis), every side a line."""
    metrics = (("jobs_per_s", "jobs/s"), ("p50_ms", "p50 latency ms"), ("p99_ms", "p99 latency ms"))
    image = Image.new("RGB", (PANEL[0] * len(metrics), PANEL[1] + 40), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 5), title, fill="black")
    for index, (key, label) in enumerate(metrics):
        series = {side: {int(c): values[key] for c, values in points.items()} for side, points in sweep.items()}
        _panel(draw, (index * PANEL[0], 30), series, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], series: dict[str, dict[int, float]], label: str) -> None:
    left, top = origin[0] + MARGIN, origin[1] + 20
    width, height = PANEL[0] - MARGIN - 20, PANEL[1] - MARGIN - 30
    xs = sorted({c for points in series.values() for c in points})
    top_value = max(v for points in series.values() for v in points.values()) * 1.1 or 1.0
    draw.rectangle((left, top, left + width, top + height), outline="black")
    draw.text((left, origin[1]), label, fill="black")

    def x_of(c: int) -> float:
        span = math.log2(xs[-1] / xs[0]) or 1.0
        return left + width * math.log2(c / xs[0]) / span

    def y_of(value: float) -> float:
        return top + height * (1 - value / top_value)

    for c in xs:
        draw.text((x_of(c) - 6, top + height + 4), str(c), fill="black")
    for fraction in (0.0, 0.5, 1.0):
        draw.text((origin[0] + 2, y_of(top_value * fraction) - 6), f"{top_value * fraction:.3g}", fill="black")
    for number, (side, points) in enumerate(series.items()):
        colour = COLOURS[number % len(COLOURS)]
        line = [(x_of(c), y_of(points[c])) for c in sorted(points)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for x, y in line:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        draw.text((left + 8, top + 6 + 14 * number), side, fill=colour)
    draw.text((left + width // 2 - 30, top + height + 18), "concurrency", fill="black")
