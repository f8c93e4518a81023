"""Progressive previews: while an image block is decoded, the rows of codes done so far, decoded to pixels.

`generate` keeps the sampled ids inside its loop; what leaves it is the token fed back to the model at each
step. A forward pre-hook on the decoder sees those tokens (one per row, shape (R, 1)), so the tap records the
tokens of one watched row per image (candidate 0 of each request) without touching the decoding code. At each
1/N of the image block the codes so far fill a grid (missing codes repeat the last row done, then the rows not
done are painted grey), which the VQ decoder turns into a preview.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from cm3leon.model.transformer import Transformer
from cm3leon.tokenizers.vocab import Vocabulary

PREVIEW_GREY = 128
PreviewSink = Callable[[np.ndarray], None]  # a preview image, uint8 (H, W, 3)


class PreviewTap:
    """Records the fed-back codes of `rows` and calls `sink` with a preview at each of `count` fractions."""

    def __init__(
        self,
        vocab: Vocabulary,
        rows: Sequence[int],
        decode: Callable[[torch.Tensor], np.ndarray],
        sink: PreviewSink,
        count: int,
    ) -> None:
        self.vocab = vocab
        self.rows = list(rows)
        self.decode = decode
        self.sink = sink
        per_image = vocab.codes_per_image
        # Thresholds in codes at 1/count, 2/count, ... of the block, rounded up to whole code rows.
        grid = vocab.image_grid
        self.thresholds = sorted({-(-per_image * q // count // grid) * grid for q in range(1, count)} - {0})
        self.codes: list[list[int]] = [[] for _ in self.rows]

    def __call__(self, module: torch.nn.Module, args: tuple) -> None:
        tokens = args[0]
        if tokens.shape[1] != 1:
            return  # the prefill: the prompt, not generated codes
        for index, token in enumerate(tokens[self.rows, 0].tolist()):
            if self.vocab.kind_of(token) == "image":
                self.codes[index].append(token)
        done = min(len(codes) for codes in self.codes)
        if self.thresholds and done >= self.thresholds[0]:
            self.thresholds.pop(0)
            self.sink(self.preview(done))

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

    def attach(self, model: Transformer) -> torch.utils.hooks.RemovableHandle:
        return model.register_forward_pre_hook(self)
