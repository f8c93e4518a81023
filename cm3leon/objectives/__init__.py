"""Training objectives on token-id documents: CM3's causally masked transform."""

from cm3leon.objectives.cm3 import CM3Config, CM3Masker, MaskedDocument, sample_poisson

__all__ = ["CM3Config", "CM3Masker", "MaskedDocument", "sample_poisson"]
