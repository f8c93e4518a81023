"""Labelled image grids: the one way this project shows pictures to a human (samples, reconstructions, demos).

Every tile is an image with a label drawn under it, wrapped to the tile width. Images are upscaled with NEAREST
so each pixel of a 64x64 world image stays a crisp square (what the model sees, not a blurred version of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cm3leon.data.world import RGB
from cm3leon.presets import Presets

Tile = tuple[np.ndarray | Image.Image, str]


@dataclass(frozen=True)
class GridStyle(Presets):
    """Layout and colours of a labelled grid. Presets: `default` (screen) and `compact` (many small tiles)."""

    font_size: int = 12
    title_font_size: int = 16
    padding: int = 6  # pixels around and between tiles
    line_spacing: int = 2  # extra pixels between wrapped label lines
    # Narrow tiles would wrap a caption into a tall column of one-word lines; keep a readable minimum width.
    min_tile_width: int = 128
    background: RGB = (255, 255, 255)
    text_colour: RGB = (20, 20, 20)
    border_colour: RGB = (200, 200, 200)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "compact": dict(font_size=10, title_font_size=13, padding=3, min_tile_width=96),
    }


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's built-in font ships with Pillow, so grids look the same on every machine.
    return ImageFont.load_default(size=size)


def _to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    """Any image-like value as an RGB PIL image: uint8 HxWx3 / HxW arrays, bool masks, floats in [0, 1]."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        # Floats in [0, 1] are the usual model-output convention; anything larger is already 0..255.
        scale = 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else 1.0
        array = np.clip(np.nan_to_num(array) * scale, 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")


def _upscale(picture: Image.Image, scale: int) -> Image.Image:
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def wrap_text(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a single word wider than the tile is broken between characters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if font.getlength(candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            current = ""
            for char in word:
                if current and font.getlength(current + char) > width:
                    lines.append(current)
                    current = ""
                current += char
        lines.append(current)
    return lines


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, style: GridStyle) -> int:
    top, bottom = font.getbbox("Ag|")[1::2]
    return int(bottom - top) + style.line_spacing


def labelled_grid(
    rows: Sequence[Sequence[Tile]],
    *,
    scale: int = 2,
    title: str | None = None,
    style: GridStyle | None = None,
) -> Image.Image:
    """One picture of rows of (image, label) tiles; rows may have different lengths and images different sizes.

    All tiles share one column width (the widest upscaled image, at least `style.min_tile_width`) so columns
    line up; each row is as tall as its tallest image plus its longest wrapped label.
    """
    style = style or GridStyle()
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    font, title_font = _font(style.font_size), _font(style.title_font_size)
    line_height = _line_height(font, style)
    label_gap = style.line_spacing + 1  # clear of the image border

    pictures = [[_upscale(_to_pil(image), scale) for image, _ in row] for row in rows]
    all_pictures = [p for row in pictures for p in row]
    tile_width = max([style.min_tile_width, *(p.width for p in all_pictures)])
    labels = [[wrap_text(label, font, tile_width) for _, label in row] for row in rows]
    row_heights = [
        max([0, *(p.height for p in row_pics)])
        + label_gap
        + line_height * max([0, *(len(lines) for lines in row_labels)])
        for row_pics, row_labels in zip(pictures, labels, strict=True)
    ]
    num_columns = max([1, *(len(row) for row in rows)])

    title_lines = wrap_text(title, title_font, num_columns * (tile_width + style.padding)) if title else []
    title_height = len(title_lines) * _line_height(title_font, style) + (style.padding if title_lines else 0)
    width = style.padding + num_columns * (tile_width + style.padding)
    height = style.padding + title_height + sum(h + style.padding for h in row_heights)
    canvas = Image.new("RGB", (width, height), style.background)
    draw = ImageDraw.Draw(canvas)

    y = style.padding
    for line in title_lines:
        draw.text((style.padding, y), line, font=title_font, fill=style.text_colour)
        y += _line_height(title_font, style)
    y += style.padding if title_lines else 0

    for row_pics, row_labels, row_height in zip(pictures, labels, row_heights, strict=True):
        image_height = max([0, *(p.height for p in row_pics)])
        for column, (picture, lines) in enumerate(zip(row_pics, row_labels, strict=True)):
            x = style.padding + column * (tile_width + style.padding)
            # Centre narrower images in the column; a thin border shows where dark images end.
            px = x + (tile_width - picture.width) // 2
            canvas.paste(picture, (px, y))
            draw.rectangle((px - 1, y - 1, px + picture.width, y + picture.height), outline=style.border_colour)
            for i, line in enumerate(lines):
                draw.text((x, y + image_height + label_gap + i * line_height), line, font=font, fill=style.text_colour)
        y += row_height + style.padding
    return canvas


def save_grid(rows: Sequence[Sequence[Tile]], path: Path, **kwargs: object) -> Path:
    """Write `labelled_grid(rows, **kwargs)` as a PNG, creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(rows, **kwargs).save(path)  # type: ignore[arg-type]
    return path
