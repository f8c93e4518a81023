"""A pre-tokenized corpus of scenes: each scene with the VQ codes of its rendered image, cached on disk.

Rendering and VQ-encoding an image costs far more than a training step's share of it, so the pretraining data
encodes a fixed set of scenes once (in batches, with a progress bar) and then samples documents from it. The
cache file is keyed by a fingerprint of the VQ weights, the world config, the split, the count and the seed:
a retrained tokenizer or another world can never silently reuse stale codes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from cm3leon.data.render import render
from cm3leon.data.world import Scene, SceneObject, Split, World, WorldConfig
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.vocab import ImageCodes

FINGERPRINT_HEX_CHARS = 16


def _render_image(world: WorldConfig, scene: Scene) -> np.ndarray:
    return render(scene, world).image


def render_images(scenes: Sequence[Scene], world: WorldConfig, workers: int = 1) -> np.ndarray:
    """(N, H, W, 3) uint8 renders of `scenes`, in `workers` processes when more than one."""
    render_one = partial(_render_image, world)
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return np.stack(pool.map(render_one, scenes, chunksize=max(len(scenes) // (4 * workers), 1)))
    return np.stack([render_one(scene) for scene in scenes])


def scene_to_json(scene: Scene) -> dict[str, object]:
    return asdict(scene)


def scene_from_json(raw: dict[str, object]) -> Scene:
    objects = tuple(SceneObject(**o) for o in raw["objects"])  # type: ignore[union-attr, arg-type]
    return Scene(
        background=str(raw["background"]),
        objects=objects,
        word=raw.get("word"),  # type: ignore[arg-type]
        word_colour=raw.get("word_colour"),  # type: ignore[arg-type]
    )


def image_tokenizer_fingerprint(image_tokenizer: ImageTokenizer) -> str:
    """A short hash of the tokenizer's config and every weight and codebook buffer: equal iff codes are equal."""
    return image_tokenizer.fingerprint()


def world_fingerprint(config: WorldConfig) -> str:
    return hashlib.sha256(repr(config).encode()).hexdigest()[:FINGERPRINT_HEX_CHARS]


def codes_key(image_tokenizer: ImageTokenizer, world: WorldConfig) -> str:
    """What a cached corpus's codes depend on: the tokenizer and the world (a cache file's name carries it)."""
    return f"{image_tokenizer_fingerprint(image_tokenizer)}-{world_fingerprint(world)}"


class Cacheable(Protocol):
    def save(self, path: Path) -> None: ...


CorpusT = TypeVar("CorpusT", bound=Cacheable)


def load_or_build(path: Path, load: Callable[[Path], CorpusT], build: Callable[[], CorpusT]) -> CorpusT:
    """The corpus cached at `path`, or built and saved there once (the save is atomic)."""
    if path.exists():
        return load(path)
    corpus = build()
    corpus.save(path)
    return corpus


@dataclass(frozen=True)
class ImageCodeCorpus:
    """Scenes and their code grids, index-aligned: `codes[i]` is the (grid, grid) VQ code grid of `scenes[i]`."""

    scenes: tuple[Scene, ...]
    codes: np.ndarray  # (N, grid, grid) int32

    def __post_init__(self) -> None:
        if self.codes.ndim != 3 or len(self.codes) != len(self.scenes):
            raise ValueError(f"codes {self.codes.shape} do not match {len(self.scenes)} scenes")

    def __len__(self) -> int:
        return len(self.scenes)

    def image_codes(self, index: int) -> ImageCodes:
        return ImageCodes.of(self.codes[index].reshape(-1).tolist())

    @classmethod
    def encode(
        cls,
        scenes: list[Scene],
        world: WorldConfig,
        image_tokenizer: ImageTokenizer,
        batch_size: int,
        progress: bool = True,
        render_workers: int = 1,
    ) -> ImageCodeCorpus:
        """Render (in `render_workers` processes) and VQ-encode `scenes` in batches."""
        if world.image_size != image_tokenizer.config.image_size:
            raise ValueError(
                f"world images are {world.image_size}px but the image tokenizer expects "
                f"{image_tokenizer.config.image_size}px"
            )
        grid = image_tokenizer.config.grid
        codes = np.zeros((len(scenes), grid, grid), dtype=np.int32)
        with tqdm(total=len(scenes), desc="VQ-encoding scenes", unit="img", disable=not progress) as bar:
            for start in range(0, len(scenes), batch_size):
                chunk = scenes[start : start + batch_size]
                images = render_images(chunk, world, render_workers)
                codes[start : start + len(chunk)] = image_tokenizer.encode(images).cpu().numpy()
                bar.update(len(chunk))
        return cls(tuple(scenes), codes)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        scenes_json = json.dumps([scene_to_json(s) for s in self.scenes])
        partial = path.with_name(path.name + ".partial.npz")
        # Compressed: numpy stores the scenes' JSON as 4-byte characters (100k scenes: 107 MB raw, ~5 MB packed).
        np.savez_compressed(partial, codes=self.codes, scenes=np.array(scenes_json))
        partial.replace(path)  # atomic: a crash mid-write never leaves a truncated cache behind

    @classmethod
    def load(cls, path: Path) -> ImageCodeCorpus:
        with np.load(path, allow_pickle=False) as data:
            scenes = tuple(scene_from_json(raw) for raw in json.loads(str(data["scenes"])))
            return cls(scenes, data["codes"].astype(np.int32))

    @classmethod
    def cached(
        cls,
        cache_dir: Path,
        world: WorldConfig,
        image_tokenizer: ImageTokenizer,
        split: Split | str,
        n_scenes: int,
        seed: int,
        batch_size: int,
        progress: bool = True,
        render_workers: int = 1,
    ) -> ImageCodeCorpus:
        """The corpus of `n_scenes` scenes of `split` (drawn with `seed`), loaded from the cache or built once."""
        split = Split(split)
        path = cache_dir / f"image_codes-{split.value}-{n_scenes}-seed{seed}-{codes_key(image_tokenizer, world)}.npz"

        def build() -> ImageCodeCorpus:
            scenes = World(world).scenes(seed, split, n_scenes)
            with torch.inference_mode():
                return cls.encode(scenes, world, image_tokenizer, batch_size, progress, render_workers)

        return load_or_build(path, cls.load, build)
