"""The pre-encoded task corpus: every image an instruction-tuning example needs, VQ-encoded once and cached.

Three pools cover all ten tasks:

- `scenes`: shapes scenes with the codes of their image AND of their colour-coded segmentation picture
  (t2i, caption, VQA, reasoning, infill, grounded, segmentation, structure-guided generation);
- `words`: text-rendering scenes (a word) with their image codes;
- `edits`: edit cases with the codes of their source and target scenes.

Which caption, question, infill region or dropout an example uses is drawn per batch from these pools, so a
fixed corpus still yields an endless variety of documents. The cache file is keyed like `ImageCodeCorpus`:
the VQ weights' fingerprint, the world's and this config's, so a retrained tokenizer never reuses stale codes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from cm3leon.data.render import render
from cm3leon.data.tasks import EditCase, make_edit
from cm3leon.data.world import Scene, Split, World, WorldConfig
from cm3leon.presets import Presets
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.vocab import ImageCodes
from cm3leon.training.image_corpus import (
    FINGERPRINT_HEX_CHARS,
    ImageCodeCorpus,
    codes_key,
    load_or_build,
    scene_from_json,
    scene_to_json,
)


@dataclass(frozen=True)
class TaskCorpusConfig(Presets):
    """Pool sizes. Presets: `tiny` (tests) and `shapes` (the demo; about 65k images, seconds on a GPU).

    Attributes:
        scenes, words, edits: pictures in each pool. Words and edits are the most combinatorial tasks (letters per
            slot, edit kinds x objects): larger pools, so a long run sees each case a few times rather than
            memorising a small set.
        seed: seed of every pool's scenes.
        encode_batch_size, render_workers: images per tokenizer batch, and processes rendering pictures while the
            main process encodes (at most the machine's cores); the codes are the same for any values.
    """

    scenes: int = 20_000
    words: int = 8_000
    edits: int = 16_000
    seed: int = 0
    encode_batch_size: int = 256
    render_workers: int = 8

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(scenes=64, words=16, edits=32, encode_batch_size=64, render_workers=1),
        "shapes": dict(),
    }

    def fingerprint(self) -> str:
        same_codes = ("encode_batch_size", "render_workers")
        pools = {k: v for k, v in asdict(self).items() if k not in same_codes}
        return hashlib.sha256(json.dumps(pools, sort_keys=True).encode()).hexdigest()[:FINGERPRINT_HEX_CHARS]


@dataclass(frozen=True)
class TaskCorpus:
    scenes: ImageCodeCorpus
    segmentation_codes: np.ndarray  # (N, g, g): the segmentation picture of scenes.scenes[i]
    words: ImageCodeCorpus
    edits: tuple[EditCase, ...]
    edit_codes: np.ndarray  # (E, 2, g, g): source and target codes of edits[i]

    def segmentation(self, index: int) -> ImageCodes:
        return ImageCodes.of(self.segmentation_codes[index].reshape(-1).tolist())

    def edit_images(self, index: int) -> tuple[ImageCodes, ImageCodes]:
        pair = self.edit_codes[index]
        return ImageCodes.of(pair[0].reshape(-1).tolist()), ImageCodes.of(pair[1].reshape(-1).tolist())

    # --- building ---------------------------------------------------------------------------------------------
    @classmethod
    def cached(
        cls,
        cache_dir: Path,
        config: TaskCorpusConfig,
        world: WorldConfig,
        image_tokenizer: ImageTokenizer,
        split: Split | str = Split.TRAIN,
        progress: bool = True,
    ) -> TaskCorpus:
        """The pools of `split`, loaded from `cache_dir` or drawn, rendered and encoded once."""
        split = Split(split)
        path = cache_dir / f"task_corpus-{split.value}-{codes_key(image_tokenizer, world)}-{config.fingerprint()}.npz"
        return load_or_build(path, cls.load, partial(cls._build, config, world, image_tokenizer, split, progress))

    @classmethod
    def _build(
        cls, config: TaskCorpusConfig, world: WorldConfig, tokenizer: ImageTokenizer, split: Split, progress: bool
    ) -> TaskCorpus:
        sampler = World(world)
        scenes = sampler.scenes(config.seed, split, config.scenes, text=False)
        words = sampler.scenes(config.seed, split, config.words, text=True)
        rng = random.Random(f"{config.seed}:{split.value}:edits")
        edits = tuple(make_edit(sampler, rng, split) for _ in range(config.edits))
        # (scene, segmentation picture?) in pool order; rendered batch by batch, so the pixels of ~70k images
        # never sit in memory at once.
        pictures = [(s, False) for s in scenes] + [(s, True) for s in scenes] + [(s, False) for s in words]
        pictures += [(s, False) for e in edits for s in (e.source, e.target)]
        codes = encode_pictures(pictures, world, tokenizer, config.encode_batch_size, progress, config.render_workers)
        n, w = len(scenes), len(words)
        grid = codes.shape[1]
        return cls(
            scenes=ImageCodeCorpus(tuple(scenes), codes[:n]),
            segmentation_codes=codes[n : 2 * n],
            words=ImageCodeCorpus(tuple(words), codes[2 * n : 2 * n + w]),
            edits=edits,
            edit_codes=codes[2 * n + w :].reshape(len(edits), 2, grid, grid),
        )

    # --- persistence ------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "scenes": [scene_to_json(s) for s in self.scenes.scenes],
            "words": [scene_to_json(s) for s in self.words.scenes],
            "edits": [
                {"instruction": e.instruction, "kind": e.kind, "source": scene_to_json(e.source),
                 "target": scene_to_json(e.target)}
                for e in self.edits
            ],
        }
        partial = path.with_name(path.name + ".partial.npz")
        np.savez_compressed(  # the metadata JSON is stored as 4-byte characters: it packs ~15x
            partial, scene_codes=self.scenes.codes, segmentation_codes=self.segmentation_codes,
            word_codes=self.words.codes, edit_codes=self.edit_codes, meta=np.array(json.dumps(meta)),
        )
        partial.replace(path)  # atomic: a crash mid-write never leaves a truncated cache

    @classmethod
    def load(cls, path: Path) -> TaskCorpus:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            edits = tuple(
                EditCase(e["instruction"], e["kind"], scene_from_json(e["source"]), scene_from_json(e["target"]))
                for e in meta["edits"]
            )
            return cls(
                scenes=ImageCodeCorpus(tuple(scene_from_json(s) for s in meta["scenes"]), data["scene_codes"]),
                segmentation_codes=data["segmentation_codes"].astype(np.int32),
                words=ImageCodeCorpus(tuple(scene_from_json(s) for s in meta["words"]), data["word_codes"]),
                edits=edits,
                edit_codes=data["edit_codes"].astype(np.int32),
            )


def _render_picture(world: WorldConfig, picture: tuple[Scene, bool]) -> np.ndarray:
    rendered = render(picture[0], world)
    return rendered.segmentation_image if picture[1] else rendered.image


def encode_pictures(
    pictures: list[tuple[Scene, bool]],
    world: WorldConfig,
    image_tokenizer: ImageTokenizer,
    batch_size: int,
    progress: bool = True,
    render_workers: int = 1,
) -> np.ndarray:
    """(N, g, g) int32 codes of each (scene, segmentation?) picture, rendered batch by batch (in up to
    `render_workers` processes) and encoded on the tokenizer's device."""
    if world.image_size != image_tokenizer.config.image_size:
        raise ValueError(f"world images are {world.image_size}px, the VQ expects {image_tokenizer.config.image_size}px")
    grid = image_tokenizer.config.grid
    codes = np.zeros((len(pictures), grid, grid), dtype=np.int32)
    render_one = partial(_render_picture, world)
    workers = max(1, min(render_workers, os.cpu_count() or 1))
    # Fork: the children only render (numpy, Pillow) and never touch the parent's torch/CUDA state.
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    bar = tqdm(total=len(pictures), desc="VQ-encoding task images", unit="img", disable=not progress)
    try:
        with torch.inference_mode(), bar:
            for start in range(0, len(pictures), batch_size):
                chunk = pictures[start : start + batch_size]
                rendered = pool.map(render_one, chunk) if pool else [render_one(p) for p in chunk]
                codes[start : start + len(chunk)] = image_tokenizer.encode(np.stack(rendered)).cpu().numpy()
                bar.update(len(chunk))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return codes
