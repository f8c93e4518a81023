"""Small helpers of the security tests."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    """The status code and details a call fails with."""
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value.code(), raised.value.details()


def image_bytes(width: int, height: int, fmt: str = "PNG", mode: str = "RGB", **save: object) -> bytes:
    buffer = io.BytesIO()
    channels = {"RGB": 3, "RGBA": 4, "CMYK": 4}.get(mode)
    shape = (height, width, channels) if channels else (height, width)
    pixels = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    Image.fromarray(pixels, mode if channels else "L").convert(mode).save(buffer, format=fmt, **save)
    return buffer.getvalue()
