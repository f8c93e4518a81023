"""Pretraining data: caption/image documents of the shapes world, CM3-masked and packed into fixed-length rows.

A document is one scene in one direction, `caption <break> IMAGE` (text->image) or `IMAGE <break> caption`
(image->text), with a detailed or a short caption; `encode_document` wraps it in `<bos> ... <eos>`. Images come
from a pre-tokenized `ImageCodeCorpus` of train-split scenes. Each micro-batch is a pure function of
(seed, batch index): see `BatchSource`.

Retrieval augmentation (RA-CM3 / CM3Leon) prepends retrieved documents to each query document. The hook is
`RetrievalHook`: a function from the query document to the documents to put before it; the group is packed as one
unit (kept in one row unless longer than it). Retrieval itself is not implemented here.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from cm3leon.checkpoint import TRAINING_RECORD_FILE
from cm3leon.data.language import detailed_caption, short_caption
from cm3leon.data.world import Scene, Split, WorldConfig
from cm3leon.objectives.cm3 import CM3Config, CM3Masker
from cm3leon.presets import Presets
from cm3leon.tasks.formats import SceneDocument
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.vocab import Document, Vocabulary
from cm3leon.training.image_corpus import ImageCodeCorpus
from cm3leon.training.packing import PackedBatches, PackUnit, TokenBatch


@dataclass(frozen=True)
class PretrainDataConfig(Presets):
    """Presets: `tiny` (tests: 32px world, small corpora) and `shapes` (the demo)."""

    seq_len: int
    world_preset: str = "shapes"
    # Fraction of scenes that show a word instead of shapes (text rendering); the world's own default is none.
    text_scene_fraction: float = 0.0
    train_scenes: int = 20_000
    heldout_scenes: int = 512
    # Held-out batches scored for per-modality perplexity (fixed batches: comparable across evaluations).
    heldout_batch_count: int = 8
    corpus_seed: int = 0
    encode_batch_size: int = 64
    # Processes that render the corpus's scenes before encoding (the encoder runs in the main process).
    render_workers: int = 1
    # Caption mix: detailed captions name every attribute (what text->image must honour); short ones are terse.
    detailed_caption_fraction: float = 0.75
    # Direction mix: text->image is the headline task, image->text (captioning) the other direction.
    image_first_fraction: float = 0.3
    # Text->image documents whose caption is replaced by a single `<mask>`: the unconditional stream that
    # classifier-free guidance decodes (cm3leon.decoding masks prompt text the same way). The paper relies on
    # CM3's masks alone; showing the exact unconditional form at a small rate is CFG's usual "caption dropout".
    unconditional_fraction: float = 0.1
    cm3: CM3Config = field(default_factory=CM3Config)
    # Documents retrieved per query document (CM3Leon: k = 2). Reserved: needs a `RetrievalHook`.
    retrieved: int = 0
    seed: int = 0

    # `preset(name, seq_len=...)`: the sequence length comes from the model config (its max_seq_len).
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(
            world_preset="shapes32", train_scenes=64, heldout_scenes=16, heldout_batch_count=2, encode_batch_size=32
        ),
        "shapes": {},
    }

    def __post_init__(self) -> None:
        fractions = ("detailed_caption_fraction", "image_first_fraction", "text_scene_fraction")
        for name in (*fractions, "unconditional_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def world(self) -> WorldConfig:
        return replace(WorldConfig.preset(self.world_preset), text_scene_fraction=self.text_scene_fraction)


def recorded_data_config(directory: Path, seq_len: int, image_size: int) -> PretrainDataConfig:
    """The data config a model directory was trained on: its training.json's, else the preset whose world has the
    VQ's image size (the data presets' worlds are the ones `cm3leon.bundle` falls back to)."""
    path = Path(directory) / TRAINING_RECORD_FILE
    raw = json.loads(path.read_text()).get("data_config") if path.exists() else None
    if raw:
        known = {f.name for f in dataclasses.fields(PretrainDataConfig)}
        values = {key: value for key, value in raw.items() if key in known}
        values["cm3"] = CM3Config(**values.get("cm3", {}))
        config = PretrainDataConfig(**values)
    else:
        matching = [PretrainDataConfig.preset(p, seq_len=seq_len) for p in ("shapes", "tiny")]
        config = next((c for c in matching if c.world().image_size == image_size), matching[0])
    if config.world().image_size != image_size:
        raise ValueError(f"world images are {config.world().image_size}px, the VQ expects {image_size}")
    return config


# The retrieval hook: query document (+ the batch's rng) -> the documents to prepend, as segment lists (text,
# ImageCodes, Locations; a retrieved document may be text-only, image-only or both). `query.scene.key()` /
# `query.corpus_index` identify the query so that a sample never retrieves itself.
RetrievalHook = Callable[[SceneDocument, random.Random], list[Document]]


def scene_caption(scene: Scene, world: WorldConfig, rng: random.Random, detailed_fraction: float) -> str:
    """A detailed caption with probability `detailed_fraction`, else a short one (both drawn from `rng`)."""
    if rng.random() < detailed_fraction:
        return detailed_caption(scene, world, rng)
    return short_caption(scene, world, rng)


class PretrainBatches(PackedBatches):
    """The pretraining `BatchSource`: micro-batch `index` -> `batch_size` packed rows of `config.seq_len`."""

    def __init__(
        self,
        config: PretrainDataConfig,
        vocab: Vocabulary,
        corpus: ImageCodeCorpus,
        batch_size: int,
        retrieval_hook: RetrievalHook | None = None,
        seed_salt: str = "train",
    ) -> None:
        if config.retrieved and retrieval_hook is None:
            raise ValueError(f"config asks for {config.retrieved} retrieved documents but no retrieval hook was given")
        if corpus.codes[0].size != vocab.codes_per_image:
            raise ValueError(f"corpus images have {corpus.codes[0].size} codes, vocabulary {vocab.codes_per_image}")
        super().__init__(vocab.pad_id, batch_size, config.seq_len, config.seed, seed_salt)
        self.config, self.vocab, self.corpus, self.retrieval_hook = config, vocab, corpus, retrieval_hook
        self.world = config.world()
        self.masker = CM3Masker(vocab, config.cm3)

    def sample_document(self, rng: random.Random) -> SceneDocument:
        index = rng.randrange(len(self.corpus))
        scene = self.corpus.scenes[index]
        caption = scene_caption(scene, self.world, rng, self.config.detailed_caption_fraction)
        image_first = rng.random() < self.config.image_first_fraction
        unconditional = not image_first and rng.random() < self.config.unconditional_fraction
        return SceneDocument(scene, index, caption, self.corpus.image_codes(index), image_first, unconditional)

    def encode_unit(self, query: SceneDocument, rng: random.Random) -> PackUnit:
        """The retrieved documents (if any) then the query, each `<bos> ... <eos>` and each CM3-masked on its own."""
        retrieved = self.retrieval_hook(query, rng) if self.retrieval_hook else []
        documents = [*(self.vocab.encode_document(document) for document in retrieved), query.token_ids(self.vocab)]
        ids: list[int] = []
        mask: list[bool] = []
        for document_ids in documents:
            masked = self.masker(document_ids, rng)
            ids.extend(masked.ids)
            mask.extend(masked.loss_mask)
        return ids, mask

    def units(self, rng: random.Random) -> Iterator[PackUnit]:
        while True:
            yield self.encode_unit(self.sample_document(rng), rng)


def load_corpus(
    config: PretrainDataConfig,
    image_tokenizer: ImageTokenizer,
    cache_dir: Path,
    split: Split | str,
    progress: bool = True,
) -> ImageCodeCorpus:
    """The train corpus (`config.train_scenes`) or a held-out one (`heldout_scenes`), cached in `cache_dir`."""
    split = Split(split)
    n_scenes = config.train_scenes if split is Split.TRAIN else config.heldout_scenes
    return ImageCodeCorpus.cached(
        cache_dir, config.world(), image_tokenizer, split, n_scenes, config.corpus_seed, config.encode_batch_size,
        progress, config.render_workers,
    )


def heldout_batches(
    config: PretrainDataConfig,
    vocab: Vocabulary,
    corpus: ImageCodeCorpus,
    batch_size: int,
    n_batches: int,
    cm3: CM3Config | None = None,
) -> list[TokenBatch]:
    """A fixed list of batches from a held-out (val/test) corpus, for perplexity per modality.

    By default plain causal documents (no CM3 masking), so text and image perplexities measure exactly the
    two generation directions; pass `cm3` to score the masked objective instead.
    """
    eval_config = replace(config, cm3=cm3 or CM3Config.preset("none"), retrieved=0, unconditional_fraction=0.0)
    source = PretrainBatches(eval_config, vocab, corpus, batch_size, seed_salt="heldout")
    return [source.batch(i) for i in range(n_batches)]
