"""Rendering a `Scene` to pixels: the RGB image, the per-pixel class map and its colour-coded picture.

Drawing is aliased on purpose (no anti-aliasing): every pixel has exactly one palette colour and one class,
so the segmentation is exact and consistent with the image by construction (both come from one polygon).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cm3leon.data.world import RGB, Scene, SceneObject, WorldConfig

# Segmentation legend: class 0 is background, then one class per shape in config order, then "text".
SEGMENTATION_PALETTE: tuple[RGB, ...] = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (240, 50, 230),
    (255, 255, 255),
    (128, 128, 0),
    (0, 128, 128),
)


def segmentation_classes(config: WorldConfig) -> tuple[str, ...]:
    """Class names by index: background, each shape, and `text` for the text-rendering scenes."""
    return ("background", *config.shapes, "text")


def segmentation_legend(config: WorldConfig) -> dict[str, RGB]:
    classes = segmentation_classes(config)
    if len(classes) > len(SEGMENTATION_PALETTE):
        raise ValueError(f"{len(classes)} segmentation classes but only {len(SEGMENTATION_PALETTE)} legend colours")
    return {name: SEGMENTATION_PALETTE[i] for i, name in enumerate(classes)}


@dataclass(frozen=True)
class RenderedScene:
    image: np.ndarray  # (H, W, 3) uint8
    segmentation: np.ndarray  # (H, W) uint8 class ids
    segmentation_image: np.ndarray  # (H, W, 3) uint8, the legend colour of each class

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


def shape_polygon(shape: str, cx: float, cy: float, extent: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape of the given extent (bounding-box side) centred at (cx, cy).

    Returns None for the circle, which is drawn as an ellipse.
    """
    r = extent / 2
    if shape == "circle":
        return None
    if shape == "square":
        # A square of the same extent looks much heavier than the circle; shrink it to balance areas a little.
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    if shape == "star":
        # A chunky five-pointed star (inner radius 0.5) keeps its points visible at low resolution.
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.5
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle) + r * 0.08))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, config: WorldConfig, fill: int | RGB) -> None:
    cx, cy = config.cell_centre(obj.cell)
    extent = config.cell_size * config.size_fraction[obj.size]
    # Pixel centres sit at +0.5: shift so shapes are symmetric on the pixel grid.
    cx, cy = cx - 0.5, cy - 0.5
    polygon = shape_polygon(obj.shape, cx, cy, extent)
    if polygon is None:
        r = extent / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(polygon, fill=fill)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's built-in font (bundled with Pillow, so every machine draws the same glyphs).
    return ImageFont.load_default(size=size)


def word_layout(config: WorldConfig, length: int) -> list[tuple[float, float]]:
    """Centres of the letter slots of a word of `length` letters: fixed slots so the oracle can template-match."""
    slot = config.image_size / config.max_word_length
    first = config.image_size / 2 - slot * (length - 1) / 2
    return [(first + i * slot, config.image_size / 2) for i in range(length)]


def letter_font_size(config: WorldConfig) -> int:
    return max(8, round(config.image_size / config.max_word_length * 0.95))


# A glyph pixel is on when its anti-aliased coverage reaches half (8-bit mask values).
_GLYPH_ON, _GLYPH_THRESHOLD = 255, 128


def word_mask(word: str, config: WorldConfig) -> Image.Image:
    """The word's glyphs as a binary ("1" mode) image_size mask.

    Pillow anti-aliases stroked text even with `fontmode = "1"`, which would give glyph edges blended colours
    and, in the class map, stray ids of other classes; thresholding the coverage keeps every pixel aliased.
    """
    size = config.image_size
    coverage = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(coverage)
    font = _font(letter_font_size(config))
    stroke = max(1, config.image_size // 48)
    for (cx, cy), letter in zip(word_layout(config, len(word)), word, strict=True):
        draw.text((cx, cy), letter, font=font, fill=_GLYPH_ON, anchor="mm", stroke_width=stroke, stroke_fill=_GLYPH_ON)
    return coverage.point(lambda v: _GLYPH_ON if v >= _GLYPH_THRESHOLD else 0, mode="1")


def draw_word(draw: ImageDraw.ImageDraw, word: str, config: WorldConfig, fill: int | RGB) -> None:
    """Paint the word's aliased glyphs with `fill` onto an image_size canvas."""
    draw.bitmap((0, 0), word_mask(word, config), fill=fill)


def render(scene: Scene, config: WorldConfig) -> RenderedScene:
    size = config.image_size
    image = Image.new("RGB", (size, size), config.background_rgb[scene.background])
    classes = Image.new("L", (size, size), 0)
    draw_rgb, draw_cls = ImageDraw.Draw(image), ImageDraw.Draw(classes)
    # Aliased glyphs: one palette colour and one class per pixel, like the polygons.
    draw_rgb.fontmode = draw_cls.fontmode = "1"
    class_index = {name: i for i, name in enumerate(segmentation_classes(config))}
    if scene.is_text:
        assert scene.word is not None and scene.word_colour is not None
        draw_word(draw_rgb, scene.word, config, config.colour_rgb[scene.word_colour])
        draw_word(draw_cls, scene.word, config, class_index["text"])
    for obj in scene.objects:
        draw_object(draw_rgb, obj, config, config.colour_rgb[obj.colour])
        draw_object(draw_cls, obj, config, class_index[obj.shape])
    segmentation = np.asarray(classes, dtype=np.uint8)
    return RenderedScene(
        image=np.asarray(image, dtype=np.uint8),
        segmentation=segmentation,
        segmentation_image=colourise_segmentation(segmentation, config),
    )


def colourise_segmentation(segmentation: np.ndarray, config: WorldConfig) -> np.ndarray:
    palette = np.array(list(segmentation_legend(config).values()), dtype=np.uint8)
    return palette[segmentation]


def segmentation_from_image(image: np.ndarray, config: WorldConfig) -> np.ndarray:
    """Class ids of a colour-coded segmentation picture (maybe a lossy reconstruction): nearest legend colour."""
    palette = np.array(list(segmentation_legend(config).values()), dtype=np.float32)
    distances = ((image[..., None, :].astype(np.float32) - palette) ** 2).sum(-1)
    return distances.argmin(-1).astype(np.uint8)


def object_box(obj: SceneObject, config: WorldConfig) -> tuple[int, int, int, int]:
    """Tight pixel box (x0, y0, x1, y1), end exclusive, of an object as rendered."""
    mask = Image.new("L", (config.image_size, config.image_size), 0)
    draw_object(ImageDraw.Draw(mask), obj, config, 1)
    ys, xs = np.nonzero(np.asarray(mask))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
