"""Progressive previews: while an image block is decoded, the rows of codes done so far, decoded to pixels.

The tap watches candidate 0 of each request of a batch. Between decode steps, in the job's own thread (never the
scheduler's), it reads the ids each watched candidate has sampled so far; at each 1/N of the image block the codes
done fill a grid (missing codes repeat the last row done, then the rows not done are painted grey), which the VQ
decoder turns into a preview. A preview shows exactly the codes up to its threshold, however many steps passed
between two looks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from cm3leon.decoding.scheduler import RequestHandle
from cm3leon.tokenizers.vocab import Vocabulary

PREVIEW_GREY = 128
PreviewSink = Callable[[np.ndarray], None]  # a preview image, uint8 (H, W, 3)


class PreviewTap:
    """Calls `sink` with a preview of the `watched` (request, candidate group) pairs at each of `count` fractions;
    pass it as `on_tick` to `ModelBundle.generate`."""

    def __init__(
        self,
        vocab: Vocabulary,
        watched: Sequence[tuple[int, int]],
        decode: Callable[[torch.Tensor], np.ndarray],
        sink: PreviewSink,
        count: int,
    ) -> None:
        self.vocab = vocab
        self.watched = list(watched)
        self.decode = decode
        self.sink = sink
        per_image = vocab.codes_per_image
        # Thresholds in codes at 1/count, 2/count, ... of the block, rounded up to whole code rows.
        grid = vocab.image_grid
        self.thresholds = sorted({-(-per_image * q // count // grid) * grid for q in range(1, count)} - {0})
        self.codes: list[list[int]] = [[] for _ in self.watched]

    def __call__(self, handles: Sequence[RequestHandle]) -> None:
        """Emit a preview for each threshold every watched candidate has passed since the last look."""
        if not self.thresholds:
            return
        self.codes = [
            [token for token in handles[request].tokens_so_far(group) if self.vocab.kind_of(token) == "image"]
            for request, group in self.watched
        ]
        done = min(len(codes) for codes in self.codes)
        while self.thresholds and done >= self.thresholds[0]:
            self.sink(self.preview(self.thresholds.pop(0)))

    def preview(self, done: int) -> np.ndarray:
        """The images of the watched rows side by side, each showing its first `done` codes."""
        grid = self.vocab.image_grid
        rows_done = done // grid
        codes = []
        for ids in self.codes:
            image_codes = [token - self.vocab.image_ids.start for token in ids[: rows_done * grid]]
            last_row = image_codes[-grid:]
            codes.append(image_codes + last_row * (grid - rows_done))
        pixels = self.decode(torch.tensor(codes, dtype=torch.long).view(len(codes), grid, grid))
        pixels = np.array(pixels, dtype=np.uint8)
        height = pixels.shape[1]
        pixels[:, height * rows_done // grid :] = PREVIEW_GREY
        return np.concatenate(list(pixels), axis=1)
