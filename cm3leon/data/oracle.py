"""The oracle: a deterministic, model-free parser from an image back to its shapes-world `Scene`.

It is the judge of every generation metric, so it must be exact on clean renders and forgiving on the
imperfect images a VQ tokenizer reconstructs or a model generates. It fits a small generative model:

    image ~= background + mask * (object colour - background)   (per grid cell, or one colour for a word)

1. Background: the background palette colour that most pixels snap to (objects cover a minority of pixels);
   its *observed* colour (median of those pixels) is used from then on, so a global colour shift is absorbed.
2. Per cell, pixels far enough from the background (`confident_fraction` of the way to the nearest object
   colour) are confidently foreground. Fewer than `min_object_fraction` of the smallest template -> empty
   (specks are ignored). Else a provisional colour: the palette colour whose background->colour segment
   passes closest to those pixels (blurred edges lie on that segment too).
3. The soft foreground weight (alpha) of each pixel is its projection onto the line background -> observed
   object colour, in a luma-weighted metric: exactly the mask for a clean render, the blurred mask for a
   blurred one.
4. Shape and size: the template (drawn by the project's renderer, with blurred and shifted variants) with the
   least squared error to alpha, the Gaussian maximum-likelihood mask. No template better than an empty
   cell (the mask is less than half covered on average) -> empty.
5. Colour: the palette colour nearest the median of the pixels inside the fitted mask, each un-mixed from
   the background by its (blurred) mask value.

Words are fitted the same way, slot by slot, for every word length; the length with the least total error
wins. `parse(image, expect_text=None)` fits both a shapes scene and a word and keeps the one whose model
explains the image better (smaller RGB residual); pass `expect_text=True/False` when the task fixes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from cm3leon.data.oracle_templates import LETTERS, TemplateBank, WordBank, letter_bank, shape_bank, shape_labels
from cm3leon.data.scene_score import aggregate_scores, score_scene
from cm3leon.data.world import Scene, SceneObject, WorldConfig
from cm3leon.presets import Presets

# Scoring lives in its own module; the oracle re-exports it so callers find parse and score in one place.
__all__ = ["Oracle", "OracleConfig", "aggregate_scores", "score_scene"]

# JPEG's (ITU-R BT.601) RGB -> luma, blue-difference, red-difference transform.
_RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


@dataclass(frozen=True)
class OracleConfig(Presets):
    """Tolerances of the oracle. Presets: `default` (robust) and `exact` (clean renders only, fastest)."""

    # Template variants: Gaussian blur radii (0 = the exact mask) and shifts up to this many pixels.
    template_blurs: tuple[float, ...] = (0.0, 0.7, 1.2)
    max_shift: int = 1
    # Prior against shifted variants, in squared-alpha units (pixels) per pixel of shift: an object is
    # assumed where the renderer puts it unless a shift explains clearly more (a 1-pixel shift of a true
    # template saves ~30-60 edge pixels, far above this), so distortions cannot buy a wrong shape by sliding.
    shift_penalty: float = 4.0
    # A pixel is confidently foreground when it is this fraction of the way from the background to the
    # nearest object colour: half way keeps sigma-12 noise (4 sigma) and half-covered edge pixels out.
    confident_fraction: float = 0.5
    # A cell holds an object when it has at least this fraction of the smallest template's area in
    # confident pixels; a speck below it is noise, not an object.
    min_object_fraction: float = 0.3
    # Pixels with a mask (or alpha) value above this are "solidly inside" an object and sample its colour.
    core_alpha: float = 0.75
    # Weight of the two chroma channels against luma when measuring alpha. Lossy codecs (JPEG subsamples
    # chroma 2x) and VQ decoders keep luma edges sharper than colour edges, so luma should lead the mask;
    # on a pair with little luma contrast (green on gray) the chroma terms still dominate the projection.
    # A quarter: the weight that reads JPEG-compressed renders (quality 30 to 60) best.
    chroma_weight: float = 0.25

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"default": {}, "exact": dict(template_blurs=(0.0,), max_shift=0)}

    def __post_init__(self) -> None:
        if not self.template_blurs or self.template_blurs[0] != 0.0:
            # The exact mask must be a variant (and the first one): that is what makes clean renders exact.
            raise ValueError(f"template_blurs must start with 0.0 (the exact mask), got {self.template_blurs}")

    @property
    def word_margin(self) -> int:
        """Rows beyond the glyphs that a word window keeps: room for the shifted, blurred variants."""
        return self.max_shift + math.ceil(2 * max(self.template_blurs))


@dataclass(frozen=True)
class _Fit:
    """One model's explanation of the image: how much it changes the squared error of the bare background
    (in the luma-weighted colour metric, so a shapes fit and a word fit of one image are comparable)."""

    gain: float
    scene: Scene


@dataclass
class Oracle:
    """`Oracle(config).parse(image) -> Scene`. Building the template banks takes a fraction of a second, and
    the letter bank is built on the first word fit; reuse one oracle for many images."""

    config: WorldConfig
    oracle_config: OracleConfig = field(default_factory=OracleConfig)

    def __post_init__(self) -> None:
        cfg, ocfg = self.config, self.oracle_config
        self._objects = np.array([rgb for _, rgb in cfg.colours], dtype=np.float32)
        self._backgrounds = np.array([rgb for _, rgb in cfg.backgrounds], dtype=np.float32)
        # Contrast of each background to its nearest object colour sets its "confidently foreground" distance.
        contrast = np.linalg.norm(self._backgrounds[:, None] - self._objects[None], axis=-1).min(axis=1)
        self._confident_distance = ocfg.confident_fraction * contrast
        channel_weights = np.diag([1.0, ocfg.chroma_weight, ocfg.chroma_weight])
        self._metric = (_RGB_TO_YCBCR.T @ channel_weights @ _RGB_TO_YCBCR).astype(np.float32)
        self._shapes = shape_bank(cfg, ocfg.template_blurs, ocfg.max_shift)
        self._shape_labels = shape_labels(cfg)
        exact_areas = self._shapes.norms[:, self._first_variant_of_each_label(self._shapes)]
        self._min_object_pixels = ocfg.min_object_fraction * float(exact_areas.min())

    @staticmethod
    def _first_variant_of_each_label(bank: TemplateBank) -> np.ndarray:
        # Variant lists start with the exact, unshifted mask of each label.
        return np.unique(bank.labels, return_index=True)[1]

    @cached_property
    def _words(self) -> WordBank:
        # Built on first use: shapes-only callers never pay for the letter templates.
        ocfg = self.oracle_config
        return letter_bank(self.config, ocfg.template_blurs, ocfg.max_shift, ocfg.word_margin)

    # ----------------------------------------------------------------------------------------------- input
    def _pixels(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """Any RGB-like image as (size*size, 3) float32 in 0..255, resized to the world's size if needed."""
        size = self.config.image_size
        if not isinstance(image, Image.Image):
            array = np.asarray(image)
            if np.issubdtype(array.dtype, np.floating) and array.size and float(array.max()) <= 1.0:
                array = array * 255.0  # floats in [0, 1] are the usual model-output convention
            image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
        image = image.convert("RGB")
        if image.size != (size, size):
            shrinking = image.size[0] > size
            image = image.resize((size, size), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.float32).reshape(-1, 3)

    @staticmethod
    def _nearest(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
        """Index of the nearest palette colour of each pixel (|p - c|^2 expanded, so one matrix product)."""
        return ((palette**2).sum(-1) - 2.0 * pixels @ palette.T).argmin(-1)

    def _background(self, pixels: np.ndarray) -> tuple[int, np.ndarray]:
        """Index of the background palette colour most pixels snap to, and its observed colour."""
        nearest = self._nearest(pixels, np.concatenate([self._backgrounds, self._objects]))
        votes = np.bincount(nearest, minlength=len(self._backgrounds))[: len(self._backgrounds)]
        index = int(votes.argmax())
        observed = np.median(pixels[nearest == index], axis=0) if votes[index] else self._backgrounds[index]
        return index, observed.astype(np.float32)

    def _colour(
        self, pixels: np.ndarray, confident: np.ndarray, background: int, observed_bg: np.ndarray
    ) -> tuple[int, np.ndarray] | None:
        """Palette index and observed colour of one object, from its confidently-foreground pixels.

        Every pixel of an object, blurred edges included, lies on the segment from the background to the
        object colour, so the palette colour chosen is the one whose segment passes closest to the confident
        pixels (robust: each pixel's squared distance is capped, so a neighbour's bleed cannot outvote).
        The observed colour is the median of the pixels solidly inside (alpha above `core_alpha`). None when
        that colour is not clearly apart from the background: the confident pixels were noise, not an object.
        """
        offsets = pixels[confident] - observed_bg  # (m, 3)
        axes = self._objects - observed_bg  # (colours, 3)
        along = offsets @ axes.T  # (m, colours)
        lengths = (axes**2).sum(-1)
        alpha = np.clip(along / lengths, 0.0, 1.0)
        squared_distance = (offsets**2).sum(-1)[:, None] - 2.0 * alpha * along + alpha**2 * lengths
        cap = self._confident_distance[background] ** 2
        index = int(np.minimum(squared_distance, cap).sum(0).argmin())
        core = alpha[:, index] >= self.oracle_config.core_alpha
        observed = np.median(pixels[confident][core] if core.any() else pixels[confident], axis=0)
        if np.linalg.norm(observed - observed_bg) <= self._confident_distance[background]:
            return None
        return index, observed

    def _alpha(self, pixels: np.ndarray, background: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray, float]:
        """Soft foreground weight of each pixel (projection on background -> colour in the luma-weighted
        metric), and the squared contrast that scales alpha errors back to colour errors."""
        axis = colour - background
        weighted = self._metric @ axis
        contrast = max(float(axis @ weighted), 1.0)
        return np.clip((pixels - background) @ weighted / contrast, 0.0, 1.0), contrast

    @staticmethod
    def _best(
        bank: TemplateBank, alpha_windows: np.ndarray, shift_penalty: float, windows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each window (all, or just `windows`): the least change of squared error (||t||^2 - 2 a.t) a
        template brings over leaving the window empty, and that template's variant index. Negative: the
        template explains the window better than the bare background does."""
        if windows is None:
            change = bank.norms - 2.0 * np.matmul(bank.templates, alpha_windows[:, :, None])[:, :, 0]
        else:
            # Few windows: one product each, since fancy-indexing the bank would copy megabytes.
            change = np.zeros((len(windows), bank.norms.shape[1]), dtype=np.float32)
            for row, w in enumerate(windows.tolist()):
                change[row] = bank.norms[w] - 2.0 * (bank.templates[w] @ alpha_windows[w])
        change += shift_penalty * bank.shifts
        best = change.argmin(axis=1)
        return change[np.arange(len(best)), best], best

    def _final_colour(
        self, pixels: np.ndarray, mask: np.ndarray, inside: np.ndarray, observed_bg: np.ndarray, provisional: int
    ) -> int:
        """The palette colour nearest a robust estimate of the object colour under the fitted mask.

        Once the mask is known, its interior is the most trustworthy sample of the object colour: blurred
        edges, JPEG chroma bleed and neighbouring specks lie outside it. Each interior pixel is un-mixed
        from the background by its mask value (pixel = bg + mask * (colour - bg)), so a blurred object does
        not look paler than it is, and the median of those per-pixel estimates ignores outliers.
        """
        if not inside.any():
            return provisional
        estimates = observed_bg + (pixels[inside] - observed_bg) / mask[inside, None]
        return int(self._nearest(np.median(estimates, axis=0)[None], self._objects)[0])

    # --------------------------------------------------------------------------------------------- fitting
    def _fit_shapes(self, pixels: np.ndarray, background: int, observed_bg: np.ndarray) -> _Fit:
        bank = self._shapes
        cell_pixels = pixels[bank.pixel_index]  # (cells, window pixels, 3)
        distance = np.linalg.norm(cell_pixels - observed_bg, axis=-1)
        confident = (distance > self._confident_distance[background]) & bank.valid
        alpha = np.zeros(bank.valid.shape, dtype=np.float32)
        contrast = np.zeros(len(bank.valid), dtype=np.float32)
        provisional = {}
        for cell in np.nonzero(confident.sum(axis=1) >= self._min_object_pixels)[0]:
            colour = self._colour(cell_pixels[cell], confident[cell], background, observed_bg)
            if colour is not None:
                provisional[int(cell)] = colour[0]
                alpha[cell], contrast[cell] = self._alpha(cell_pixels[cell], observed_bg, colour[1])
        cells = np.array(sorted(provisional), dtype=np.int64)  # only cells with candidate objects are scored
        changes, variants = self._best(bank, alpha * bank.valid, self.oracle_config.shift_penalty, cells)
        objects = []
        for cell, change, variant in zip(cells.tolist(), changes, variants, strict=True):
            if change >= 0:  # the mask is not even half covered on average: a smudge, not an object
                continue
            guess = provisional[cell]
            mask = bank.templates[cell, variant]
            inside = (mask >= self.oracle_config.core_alpha) & confident[cell]
            colour = self._final_colour(cell_pixels[cell], mask, inside, observed_bg, guess)
            colour_name = self.config.colour_names[colour]
            shape, size = self._shape_labels[bank.labels[variant]]
            objects.append(SceneObject(cell, shape, colour_name, size))
        gain = float((np.minimum(changes, 0.0) * contrast[cells]).sum())
        background_name = self.config.background_names[background]
        return _Fit(gain=gain, scene=Scene(background=background_name, objects=tuple(objects)))

    def _fit_word(self, pixels: np.ndarray, background: int, observed_bg: np.ndarray) -> _Fit | None:
        confident = np.linalg.norm(pixels - observed_bg, axis=-1) > self._confident_distance[background]
        colour = self._colour(pixels, confident, background, observed_bg) if confident.sum() else None
        if confident.sum() < self._min_object_pixels or colour is None:
            return None
        alpha, contrast = self._alpha(pixels, observed_bg, colour[1])
        bank = self._words.bank
        change, variants = self._best(bank, bank.gather(alpha), self.oracle_config.shift_penalty)
        # Each length explains the image with its own slots; the best total error picks the length.
        _, slots = min(self._words.slots_of_length.items(), key=lambda item: change[item[1]].sum())
        windows = np.arange(len(change))[slots]
        word = "".join(LETTERS[bank.labels[variants[w]]] for w in windows)
        mask = np.zeros(len(pixels), dtype=np.float32)
        for w in windows:
            np.maximum.at(mask, bank.pixel_index[w], bank.templates[w, variants[w]] * bank.valid[w])
        inside = (mask >= self.oracle_config.core_alpha) & confident
        word_colour = self._final_colour(pixels, mask, inside, observed_bg, colour[0])
        scene = Scene(
            background=self.config.background_names[background],
            word=word,
            word_colour=self.config.colour_names[word_colour],
        )
        return _Fit(gain=float(change[slots].sum()) * contrast, scene=scene)

    def _word_band_energy(self, pixels: np.ndarray, observed_bg: np.ndarray) -> float:
        """A bound on how well any word can fit: the squared distance from the background of every pixel in
        the letter band. A word's gain is at least minus this (a template cannot explain more than all of
        alpha, and alpha's share of a pixel is at most its whole distance), so a shapes fit that already
        gains more makes the word fit unnecessary: a speed-up that never changes the answer."""
        size = self.config.image_size
        rows = self._words.rows
        offsets = pixels[rows.start * size : rows.stop * size] - observed_bg
        return float(np.einsum("pi,ij,pj->", offsets, self._metric, offsets))

    # ------------------------------------------------------------------------------------------ public API
    def parse(self, image: np.ndarray | Image.Image, expect_text: bool | None = None) -> Scene:
        """The scene an image shows. `expect_text`: True -> a word scene, False -> shapes, None -> whichever
        model explains the image better (a word image with no readable word comes back with no objects)."""
        pixels = self._pixels(image)
        background, observed_bg = self._background(pixels)
        if expect_text:
            fit = self._fit_word(pixels, background, observed_bg)
            return fit.scene if fit else Scene(background=self.config.background_names[background])
        shapes = self._fit_shapes(pixels, background, observed_bg)
        if expect_text is False or shapes.gain <= -self._word_band_energy(pixels, observed_bg):
            return shapes.scene
        word = self._fit_word(pixels, background, observed_bg)
        return word.scene if word is not None and word.gain < shapes.gain else shapes.scene

    def parse_word(self, image: np.ndarray | Image.Image) -> tuple[str, str] | None:
        """(word, colour name) read from a text image, or None when nothing is drawn on the background."""
        pixels = self._pixels(image)
        background, observed_bg = self._background(pixels)
        fit = self._fit_word(pixels, background, observed_bg)
        if fit is None:
            return None
        assert fit.scene.word is not None and fit.scene.word_colour is not None
        return fit.scene.word, fit.scene.word_colour
