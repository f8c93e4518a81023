"""Families of decoding policies a model can name in its capabilities.json (`cm3leon.inference.policies`)."""
