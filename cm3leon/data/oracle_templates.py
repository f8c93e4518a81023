"""Template banks for the oracle: every mask it can match, drawn by the project's own renderer.

Each shape of each size in each cell, and each letter in each word slot, is drawn with `render.draw_object` /
`render.draw_word`, so a clean render matches its template exactly by construction. Each mask also gets
variants the oracle should forgive in imperfect images: Gaussian-blurred copies (a VQ decoder or a resample
softens edges; the foreground weight of a blurred edge is exactly the blurred mask) and copies shifted by a
pixel or so (a generated object may sit slightly off its cell centre).

A bank stores its masks gathered into fixed-size windows (a grid cell, a word slot) so that the oracle scores
every window against every template with one batched product.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from string import ascii_uppercase

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cm3leon.data.render import draw_object, draw_word, word_layout
from cm3leon.data.world import SceneObject, WorldConfig

# Masks are drawn at full 8-bit intensity so that PIL's blur keeps 1/255 precision.
_MASK_ON = 255
LETTERS = ascii_uppercase


@dataclass(frozen=True)
class Window:
    """A rectangle of the image, end exclusive: one grid cell, or one letter slot of a word."""

    x0: int
    y0: int
    x1: int
    y1: int


@dataclass(frozen=True)
class TemplateBank:
    """Templates gathered into windows: `templates[w, v]` is variant v seen through window w.

    All windows share one padded size (`pixel_index` holds flat image indices, `valid` marks the real ones),
    so scoring every window against every variant is a single batched product.
    """

    pixel_index: np.ndarray  # (windows, pixels) int64 flat indices into the image
    valid: np.ndarray  # (windows, pixels) bool: False for padding
    templates: np.ndarray  # (windows, variants, pixels) float32 in [0, 1]
    norms: np.ndarray  # (windows, variants) float32: sum of squares of each template
    labels: np.ndarray  # (variants,) int64: the label index (shape-size or letter) of each variant
    shifts: np.ndarray  # (variants,) int64: how far (|dy| + |dx| pixels) each variant is moved off its slot

    def gather(self, values: np.ndarray) -> np.ndarray:
        """Values (flat, per pixel) seen through every window; padding reads as 0 so it never scores."""
        return np.where(self.valid, values[self.pixel_index], 0.0).astype(np.float32)


def _draw_mask(config: WorldConfig, draw: Callable[[ImageDraw.ImageDraw], None]) -> Image.Image:
    mask = Image.new("L", (config.image_size, config.image_size), 0)
    canvas = ImageDraw.Draw(mask)
    canvas.fontmode = "1"  # aliased, as `render` draws glyphs
    draw(canvas)
    return mask


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The mask moved by (dy, dx) pixels, filling with zeros (no wrap-around)."""
    out = np.zeros_like(mask)
    height, width = mask.shape
    out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = mask[
        max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)
    ]
    return out


def mask_variants(mask: Image.Image, blurs: Sequence[float], max_shift: int) -> list[tuple[np.ndarray, int]]:
    """The mask under every (blur, shift) pair, as floats in [0, 1], each with its shift distance
    (|dy| + |dx|); the exact mask comes first."""
    variants = []
    shifts = [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)]
    shifts.sort(key=lambda s: abs(s[0]) + abs(s[1]))  # (0, 0) first: ties then prefer the unshifted fit
    for blur in blurs:
        blurred = mask if blur == 0 else mask.filter(ImageFilter.GaussianBlur(blur))
        array = np.asarray(blurred, dtype=np.float32) / _MASK_ON
        variants.extend((_shifted(array, dy, dx), abs(dy) + abs(dx)) for dy, dx in shifts)
    return variants


def _bank(
    config: WorldConfig,
    windows: Sequence[Window],
    masks: Sequence[Sequence[tuple[np.ndarray, int]]],
    labels: Sequence[int],
) -> TemplateBank:
    """Gather per-window variant masks (`masks[w][v]`: full-image array, shift) into one padded bank.
    Every window has the same variants in the same order, so labels and shifts are shared."""
    height = max(w.y1 - w.y0 for w in windows)
    width = max(w.x1 - w.x0 for w in windows)
    pixel_index = np.zeros((len(windows), height * width), dtype=np.int64)
    valid = np.zeros((len(windows), height * width), dtype=bool)
    for k, window in enumerate(windows):
        ys, xs = np.meshgrid(np.arange(height) + window.y0, np.arange(width) + window.x0, indexing="ij")
        inside = (ys < window.y1) & (xs < window.x1)
        pixel_index[k] = np.where(inside, ys * config.image_size + xs, 0).ravel()
        valid[k] = inside.ravel()
    templates = np.stack(
        [np.stack([m.ravel()[pixel_index[k]] * valid[k] for m, _ in masks[k]]) for k in range(len(windows))]
    ).astype(np.float32)
    return TemplateBank(
        pixel_index=pixel_index,
        valid=valid,
        templates=templates,
        norms=(templates**2).sum(-1),
        labels=np.asarray(labels, dtype=np.int64),
        shifts=np.asarray([shift for _, shift in masks[0]], dtype=np.int64),
    )


def shape_labels(config: WorldConfig) -> list[tuple[str, str]]:
    """Label index -> (shape, size), in config order."""
    return [(shape, size) for shape in config.shapes for size in config.size_names]


def shape_bank(config: WorldConfig, blurs: Sequence[float], max_shift: int) -> TemplateBank:
    """One window per grid cell; variants are every (shape, size) under every blur and shift."""
    windows = [Window(*config.cell_box(cell)) for cell in range(config.num_cells)]
    any_colour = config.colour_names[0]  # masks do not depend on colour
    masks, labels = [], []
    for cell in range(config.num_cells):
        cell_masks, labels = [], []
        for label, (shape, size) in enumerate(shape_labels(config)):
            obj = SceneObject(cell=cell, shape=shape, colour=any_colour, size=size)
            mask = _draw_mask(config, lambda canvas, obj=obj: draw_object(canvas, obj, config, _MASK_ON))
            variants = mask_variants(mask, blurs, max_shift)
            cell_masks.extend(variants)
            labels.extend([label] * len(variants))
        masks.append(cell_masks)
    return _bank(config, windows, masks, labels)


@dataclass(frozen=True)
class WordBank:
    """Letter templates for every word length: slots of length L are `bank` windows `slots_of_length[L]`."""

    bank: TemplateBank
    slots_of_length: dict[int, slice]
    rows: slice  # the band of image rows every letter window lies in


def letter_bank(config: WorldConfig, blurs: Sequence[float], max_shift: int, margin: int) -> WordBank:
    """One window per (word length, slot); variants are the 26 letters under every blur and shift.

    A letter of slot i is drawn by `draw_word` on a word that is blank (spaces) everywhere else, so a word
    render is exactly the union of its letters' templates. Windows are one slot wide (letters never cross into
    a neighbour slot) and span the glyph rows plus `margin`, enough for blurred and shifted variants.
    """
    size = config.image_size
    slot_width = size / config.max_word_length
    rows = np.zeros(size, dtype=bool)
    for letter in LETTERS:
        mask = np.asarray(_draw_mask(config, lambda canvas, letter=letter: draw_word(canvas, letter, config, 1)))
        rows |= mask.any(axis=1)
    row_ids = np.nonzero(rows)[0]
    y0, y1 = max(0, int(row_ids.min()) - margin), min(size, int(row_ids.max()) + 1 + margin)
    windows, masks, labels, slots_of_length = [], [], [], {}
    for length in range(1, config.max_word_length + 1):
        first = len(windows)
        for slot, (cx, _) in enumerate(word_layout(config, length)):
            x0, x1 = max(0, round(cx - slot_width / 2)), min(size, round(cx + slot_width / 2))
            windows.append(Window(x0, y0, x1, y1))
            slot_masks, labels = [], []
            for label, letter in enumerate(LETTERS):
                word = " " * slot + letter + " " * (length - 1 - slot)
                mask = _draw_mask(config, lambda canvas, word=word: draw_word(canvas, word, config, _MASK_ON))
                variants = mask_variants(mask, blurs, max_shift)
                slot_masks.extend(variants)
                labels.extend([label] * len(variants))
            masks.append(slot_masks)
        slots_of_length[length] = slice(first, len(windows))
    bank = _bank(config, windows, masks, labels)
    return WordBank(bank=bank, slots_of_length=slots_of_length, rows=slice(y0, y1))
