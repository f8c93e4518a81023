"""Image decoding off the event loop: a small dedicated thread pool, entered through a semaphore, so that many
large inline images queue here instead of stalling every other RPC (health checks included)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from services.settings import GatewaySettings
from services.validation import normalise_image

# Decodes running at once (PIL releases the GIL while decoding, so these overlap with the event loop).
DECODE_THREADS = 2


class ImageDecoder:
    def __init__(self, threads: int = DECODE_THREADS) -> None:
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cm3leon-decode")
        self.slots: asyncio.Semaphore | None = None
        self.threads = threads

    async def png(self, path: str, data: bytes, settings: GatewaySettings) -> bytes:
        """`normalise_image` in the pool: PNG bytes of a checked PNG/JPEG, or InvalidArgument naming `path`."""
        if self.slots is None:  # made on first use, inside the server's event loop
            self.slots = asyncio.Semaphore(self.threads)
        async with self.slots:
            return await asyncio.get_running_loop().run_in_executor(self.pool, normalise_image, path, data, settings)


DECODER = ImageDecoder()


async def decode_image(path: str, data: bytes, settings: GatewaySettings) -> bytes:
    return await DECODER.png(path, data, settings)
