"""ModelBundle: a model directory loaded once, with everything serving, evaluation and benchmarks decode with.

    model, vocab, image_tokenizer   the decoder and its tokenizers (cm3leon.checkpoint)
    world                           the shapes world it was trained on (training.json), None when it has none
    defaults                        per job kind, its decoding defaults (decoding_defaults.json)
    capabilities                    the kinds it runs and the decoding policies it turns on (capabilities.json)
    answers_worked                  it was tuned to work VQA answers out (training.json)
    retriever                       the CLIP-style retriever that reranks its candidates, when one is given
    decoder                         the one scheduler every generation of this model goes through (`generate`)

One object, so that every consumer builds the same prompts for the same world, reads the same defaults and
decodes on the same path: serving jobs, policy stages, evaluations and benchmarks share the scheduler, so a
request gives the same output alone, beside other jobs or in an offline batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cm3leon.checkpoint import TRAINING_RECORD_FILE, load_checkpoint
from cm3leon.data.world import WorldConfig
from cm3leon.decoding import CancelCheck, ImageDecoder, ProgressCallback, Scorer
from cm3leon.decoding.defaults import load_decoding_defaults
from cm3leon.decoding.params import GenerationRequest, GenerationResult, SamplingParams
from cm3leon.decoding.scheduler import BatchTick, Scheduler, SchedulerConfig
from cm3leon.kinds import Capabilities
from cm3leon.model import Transformer
from cm3leon.requests import UnsupportedJobKind
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.vocab import Vocabulary

# World presets tried, in order, when a checkpoint records none: the one whose image size matches the VQ (the
# worlds of the `shapes` and `tiny` data presets).
FALLBACK_WORLD_PRESETS: tuple[str, ...] = ("shapes", "shapes32")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def training_record(directory: Path) -> dict[str, Any]:
    """DIR/training.json (written by `cm3leon train pretrain|sft`), or {} without one."""
    path = directory / TRAINING_RECORD_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def recorded_world(record: dict[str, Any], image_size: int) -> WorldConfig | None:
    """The world a training record names (its data config's preset and text-scene share), else the fallback preset
    whose image size is the VQ's; None when no world fits."""
    data = record.get("data_config")
    if data:
        world = WorldConfig.preset(data.get("world_preset", "shapes"))
        world = dataclasses.replace(world, text_scene_fraction=data.get("text_scene_fraction", 0.0))
        if world.image_size != image_size:
            raise ValueError(f"world images are {world.image_size}px, the VQ expects {image_size}")
        return world
    matching = [WorldConfig.preset(name) for name in FALLBACK_WORLD_PRESETS]
    return next((world for world in matching if world.image_size == image_size), None)


def model_id_of(directory: Path) -> str:
    """Directory name and the first 12 hex digits of the weights' sha256: names exactly what ran."""
    digest = hashlib.sha256()
    with open(directory / "model.safetensors", "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"{directory.resolve().name}@{digest.hexdigest()[:12]}"


@dataclass(eq=False)
class ModelBundle:
    """A loaded model directory (see the module docstring). `ModelBundle.load` is the one way to make one."""

    directory: Path
    model: Transformer
    vocab: Vocabulary
    image_tokenizer: ImageTokenizer | None
    world: WorldConfig | None
    defaults: dict[str, SamplingParams]
    capabilities: Capabilities
    answers_worked: bool
    retriever: Retriever | None = None
    decoder_config: SchedulerConfig = field(default_factory=SchedulerConfig)
    _decoder: Scheduler | None = field(default=None, init=False, repr=False)
    _decoder_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def load(
        cls,
        directory: Path | str,
        device: str = "cpu",
        retriever: Retriever | None = None,
        require_vq: bool = False,
        decoder_config: SchedulerConfig | None = None,
    ) -> ModelBundle:
        directory = Path(directory)
        model, vocab, image_tokenizer = load_checkpoint(directory, device=resolve_device(device))
        if image_tokenizer is None and require_vq:
            raise ValueError(f"{directory} has no vq/ image tokenizer: generation metrics need one")
        record = training_record(directory)
        world = recorded_world(record, image_tokenizer.config.image_size) if image_tokenizer is not None else None
        worked = bool(record.get("sft_data_config", {}).get("vqa_worked_answers", False))
        return cls(
            directory,
            model.eval(),
            vocab,
            image_tokenizer,
            world,
            load_decoding_defaults(directory),
            Capabilities.load(directory),
            worked,
            retriever,
            decoder_config or SchedulerConfig(),
        )

    @property
    def decoder(self) -> Scheduler:
        """The model's scheduler, made (and its KV-cache rows allocated) at the first generation."""
        with self._decoder_lock:
            if self._decoder is None:
                self._decoder = Scheduler(self.model, self.vocab, self.decoder_config)
            return self._decoder

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        image_decoder: ImageDecoder | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        scorer: Scorer | None = None,
        on_tick: BatchTick | None = None,
    ) -> list[GenerationResult]:
        """Decode the requests together through the model's scheduler (`Scheduler.run_batch`'s contract);
        thread-safe, so concurrent jobs share decode steps."""
        return self.decoder.run_batch(
            requests,
            image_decoder=image_decoder,
            progress=progress,
            should_cancel=should_cancel,
            scorer=scorer,
            on_tick=on_tick,
        )

    @cached_property
    def model_id(self) -> str:
        return model_id_of(self.directory)

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @property
    def image_size(self) -> int:
        return self.vq.config.image_size

    @property
    def vq(self) -> ImageTokenizer:
        """The image tokenizer; UnsupportedJobKind for a checkpoint without one (it cannot read or draw images)."""
        if self.image_tokenizer is None:
            raise UnsupportedJobKind("image", f"{self.directory} has no vq/ image tokenizer")
        return self.image_tokenizer

    def fit_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) resized to the VQ tokenizer's square input (bicubic), as the model saw images."""
        size = self.image_size
        if image.shape[:2] == (size, size):
            return image
        return np.array(Image.fromarray(image).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))

    def encode_image(self, image: np.ndarray) -> list[int]:
        with torch.inference_mode():
            return self.vq.encode(self.fit_image(image)[None]).reshape(-1).tolist()

    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(self.vq.decode(codes))
