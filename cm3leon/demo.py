"""The demo that `make demo` runs (until the serving stack lands): shapes-world samples, and their round trip
through the shipped image tokenizer, judged by the oracle. Pictures go to the output directory."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from cm3leon.data.grid import save_grid
from cm3leon.data.language import detailed_caption
from cm3leon.data.oracle import Oracle
from cm3leon.data.render import render
from cm3leon.data.world import Split, World, WorldConfig
from cm3leon.tokenizers.image import ImageTokenizer

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "shapes"


def run_demo(out: Path, model_dir: Path = SHIPPED_MODEL_DIR, n: int = 12, seed: int = 0) -> None:

    vq_dir = model_dir / "vq"
    if not vq_dir.exists():
        raise SystemExit(f"no image tokenizer at {vq_dir}; train one with `cm3leon train vq --preset shapes --out DIR`")
    out.mkdir(parents=True, exist_ok=True)
    config = WorldConfig.preset("shapes")
    world, oracle = World(config), Oracle(config)
    rng = random.Random(seed)
    scenes = [world.sample(rng, Split.TEST, text=(i % 6 == 5)) for i in range(n)]
    renders = [render(scene, config) for scene in scenes]

    tokenizer = ImageTokenizer.from_pretrained(vq_dir)
    originals = np.stack([r.image for r in renders])
    segmentations = np.stack([r.segmentation_image for r in renders])
    codes = tokenizer.encode(np.concatenate([originals, segmentations]))
    reconstructions = tokenizer.decode(codes)
    image_recon, segmentation_recon = reconstructions[:n], reconstructions[n:]

    rows = []
    exact = 0
    for i, scene in enumerate(scenes):
        parsed = oracle.parse(image_recon[i], expect_text=scene.is_text)
        ok = parsed == scene
        exact += ok
        rows.append(
            [
                (originals[i], detailed_caption(scene, config)),
                (image_recon[i], f"VQ {tokenizer.config.codes_per_image} codes: oracle {'exact' if ok else 'MISSED'}"),
                (segmentations[i], "segmentation"),
                (segmentation_recon[i], "segmentation via VQ"),
            ]
        )
    path = save_grid(rows, out / "vq_roundtrip.png", title="shapes world -> VQ codes -> pixels")
    print(f"oracle recovered {exact}/{n} scenes exactly from their VQ reconstructions")
    print(f"wrote {path}")
