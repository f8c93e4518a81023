"""Captioning evaluation: the decoder describes held-out test images, and the captions are read back exactly.

Prompt: `<bos> IMAGE <break>`, the pretraining direction `IMAGE <break> caption`, continued as text until `<eos>`
(per the checkpoint's caption default: greedy, or several samples reranked by the noisy channel,
`cm3leon.decoding.channel`). Each caption is parsed with `parse_caption` into a Scene and compared with the truth
(exact-scene and attribute accuracies); BLEU-4 is taken against every detailed paraphrase of the scene, since any
of them is a correct caption.

Scoring given captions is the pure function `score_captions`, separate from generation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cm3leon.bundle import ModelBundle
from cm3leon.data.grid import Tile, save_grid
from cm3leon.data.language import detailed_caption_variants, parse_caption
from cm3leon.data.render import render
from cm3leon.data.world import Scene, Split, WorldConfig
from cm3leon.decoding import SamplingParams
from cm3leon.decoding.defaults import CAPTION, load_decoding_defaults, params_record
from cm3leon.evaluation.bleu import corpus_bleu
from cm3leon.evaluation.decoder_setup import eval_scenes
from cm3leon.evaluation.scene_metrics import UNREADABLE, summarize_predictions, verdict_label
from cm3leon.presets import Presets
from cm3leon.tasks.decode import caption_images
from cm3leon.tokenizers.vocab import ImageCodes


@dataclass(frozen=True)
class CaptionEvalConfig(Presets):
    """Size of one captioning evaluation. Presets: `standard` (reported numbers), `quick` (tests)."""

    n: int = 200
    batch_size: int = 16
    seed: int = 0
    split: str = Split.TEST.value
    grid_tiles: int = 12  # test images shown in the grid PNG
    grid_columns: int = 4

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"standard": {}, "quick": dict(n=4, batch_size=4, grid_tiles=4)}

    def __post_init__(self) -> None:
        if Split(self.split) is Split.TRAIN:
            raise ValueError("the evaluation runs on held-out splits (test, test_compositional, val); got train")
        if self.n < 1 or self.batch_size < 1:
            raise ValueError("n and batch_size must be >= 1")


def reference_captions(scenes: Sequence[Scene], world: WorldConfig) -> list[list[str]]:
    """Per scene, every detailed paraphrase: the references BLEU compares a generated caption with."""
    return [detailed_caption_variants(scene, world) for scene in scenes]


def score_captions(
    captions: Sequence[str], scenes: Sequence[Scene], world: WorldConfig
) -> tuple[dict[str, object], list[Scene]]:
    """Metrics of generated captions against their scenes: `summarize_predictions` of the parsed captions (an
    unparseable caption matches nothing), `parse_rate` and corpus `bleu4`; and the parsed scenes."""
    parsed = [parse_caption(caption, world) for caption in captions]
    predicted = [scene if scene is not None else UNREADABLE for scene in parsed]
    metrics = summarize_predictions(scenes, predicted)
    metrics["parse_rate"] = sum(scene is not None for scene in parsed) / len(parsed)
    metrics["bleu4"] = corpus_bleu(captions, reference_captions(scenes, world))
    return metrics, predicted


def caption_token_budget(checkpoint: ModelBundle, references: Sequence[Sequence[str]]) -> int:
    """New tokens a caption may take: the longest reference plus its `<eos>` (room for any correct caption,
    none for endless rambling), within what the context leaves after the image prompt."""
    vocab = checkpoint.vocab
    longest = max(len(vocab.encode_text(ref)) for refs in references for ref in refs)
    prompt_length = vocab.codes_per_image + 2  # <bos> IMAGE <break>
    context_left = checkpoint.model.config.max_seq_len - prompt_length + 1  # the last token is never fed back
    return min(longest + 1, context_left)


def encode_scene_images(checkpoint: ModelBundle, scenes: Sequence[Scene], batch_size: int) -> list[ImageCodes]:
    """The VQ codes of each scene's render: what the model sees of a test image."""
    codes: list[ImageCodes] = []
    for first in range(0, len(scenes), batch_size):
        images = np.stack([render(scene, checkpoint.world).image for scene in scenes[first : first + batch_size]])
        grids = checkpoint.image_tokenizer.encode(images).cpu().numpy()
        codes.extend(ImageCodes.of(grid.reshape(-1).tolist()) for grid in grids)
    return codes


@dataclass
class CaptionRun:
    params: SamplingParams  # as decoded (max_new_tokens is the caption budget)
    captions: list[str]
    generated_tokens: int  # every generated id of every candidate, <eos> included
    seconds: float


def generate_captions(
    checkpoint: ModelBundle, images: Sequence[ImageCodes], params: SamplingParams, batch_size: int, seed: int
) -> CaptionRun:
    """A caption per image, timed (`caption_images`: request i seeded by `request_seed(seed, i)`, decoding stops at
    `<eos>`, several candidates per image reranked by `ChannelScorer`)."""
    start = time.perf_counter()
    captions, tokens = caption_images(checkpoint, images, params, batch_size, seed)
    return CaptionRun(params, captions, tokens, time.perf_counter() - start)


def run_captioning(
    checkpoint: ModelBundle, scenes: Sequence[Scene], params: SamplingParams, batch_size: int, seed: int
) -> tuple[CaptionRun, dict[str, object], list[Scene]]:
    """Generate and score captions of `scenes`; `params.max_new_tokens` is replaced by the caption budget."""
    references = reference_captions(scenes, checkpoint.world)
    params = params.replace(max_new_tokens=caption_token_budget(checkpoint, references))
    images = encode_scene_images(checkpoint, scenes, batch_size)
    run = generate_captions(checkpoint, images, params, batch_size, seed)
    metrics, predicted = score_captions(run.captions, scenes, checkpoint.world)
    metrics["captions_per_s"] = len(run.captions) / run.seconds
    metrics["tokens_per_s"] = run.generated_tokens / run.seconds
    return run, metrics, predicted


def evaluate_captioning(
    checkpoint: ModelBundle,
    config: CaptionEvalConfig,
    grid_path: Path | None = None,
    params: SamplingParams | None = None,
) -> dict[str, object]:
    """The report (metrics of `score_captions` plus speed and the decoding parameters); writes the grid PNG
    (image, generated caption, verdict) when `grid_path` is given."""
    params = params or load_decoding_defaults(checkpoint.directory)[CAPTION]
    scenes = eval_scenes(checkpoint.world, config.split, config.n, config.seed)
    run, metrics, predicted = run_captioning(checkpoint, scenes, params, config.batch_size, config.seed)
    report: dict[str, object] = {"split": config.split, "seed": config.seed, **metrics}
    report["decoding"] = params_record(run.params)
    if grid_path is not None:
        world = checkpoint.world
        tiles: list[Tile] = [
            (
                render(scenes[i], world).image,
                f"caption: {run.captions[i] or '(empty)'}\n{verdict_label(predicted[i], scenes[i], world)}",
            )
            for i in range(min(config.grid_tiles, len(scenes)))
        ]
        rows = [tiles[i : i + config.grid_columns] for i in range(0, len(tiles), config.grid_columns)]
        save_grid(rows, grid_path, title=f"captioning, {config.split} split: {checkpoint.directory.name}")
    return report
