"""Infilling in code space: which image codes a pixel region hides, and putting generated codes back.

A region (e.g. one grid cell of the shapes world) is masked as every code whose patch overlaps it, so no pixel of the
region survives in the prompt. In raster order those codes form one contiguous run per code row: each run
becomes one CM3 `<mask:i>` sentinel (rows are never adjacent, since a cell never spans the whole code width).
"""

from __future__ import annotations

from collections.abc import Sequence

from cm3leon.data.tasks import PixelBox
from cm3leon.tokenizers.vocab import ImageCodes, Vocabulary

CodeBox = tuple[int, int, int, int]  # (col0, row0, col1, row1) of the code grid, end exclusive


def region_code_box(region: PixelBox, image_size: int, vocab: Vocabulary) -> CodeBox:
    """The code cells whose pixel patch overlaps `region` (pixels of an `image_size` square image)."""
    grid = vocab.image_grid
    if image_size % grid:
        raise ValueError(f"image size {image_size} is not a multiple of the code grid {grid}")
    patch = image_size // grid
    x0, y0, x1, y1 = region
    return x0 // patch, y0 // patch, -(-x1 // patch), -(-y1 // patch)


def infill_spans(region: PixelBox, image_size: int, vocab: Vocabulary) -> list[tuple[int, int]]:
    """[start, end) offsets into the image's raster codes: one span per code row of the region."""
    col0, row0, col1, row1 = region_code_box(region, image_size, vocab)
    grid = vocab.image_grid
    if col1 - col0 >= grid:
        raise ValueError("an infill region spanning every code column would make adjacent spans")
    spans = [(row * grid + col0, row * grid + col1) for row in range(row0, row1)]
    if len(spans) > len(vocab.mask_sentinel_ids):
        raise ValueError(f"region needs {len(spans)} sentinels, the vocabulary has {len(vocab.mask_sentinel_ids)}")
    return spans


def span_lengths(region: PixelBox, image_size: int, vocab: Vocabulary) -> list[int]:
    return [end - start for start, end in infill_spans(region, image_size, vocab)]


def fill_region(
    image: ImageCodes, region: PixelBox, image_size: int, vocab: Vocabulary, region_codes: Sequence[int]
) -> ImageCodes:
    """`image` with the region's codes (raster order, all spans concatenated) replaced by `region_codes`."""
    codes = list(image.codes)
    spans = infill_spans(region, image_size, vocab)
    if len(region_codes) != sum(end - start for start, end in spans):
        raise ValueError(f"{len(region_codes)} codes for a region of {sum(e - s for s, e in spans)}")
    cursor = 0
    for start, end in spans:
        codes[start:end] = region_codes[cursor : cursor + end - start]
        cursor += end - start
    return ImageCodes.of(codes)


def region_codes_from_output(output: Sequence[int], vocab: Vocabulary) -> list[int]:
    """The image codes of an infill continuation (`row0 <mask:1> row1 ... <eos>`): sentinels and `<eos>` dropped."""
    return [token - vocab.image_ids.start for token in output if token in vocab.image_ids]
