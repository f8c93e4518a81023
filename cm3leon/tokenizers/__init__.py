"""Tokenizers: the VQ image tokenizer (images <-> code grids)."""

from cm3leon.tokenizers.image import ImageTokenizer, ImageTokenizerConfig

__all__ = ["ImageTokenizer", "ImageTokenizerConfig"]
