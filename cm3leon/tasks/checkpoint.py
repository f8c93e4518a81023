"""A loaded model directory together with the world it was trained on: what task prompts and decoding need.

A checkpoint directory (cm3leon.checkpoint) holds the model, vocabulary and VQ tokenizer but not the world it
was trained on. `training.json` (written by `cm3leon train pretrain`) records the data config, which names the
world; without it, the world preset whose image size matches the VQ tokenizer is the one the data presets use.
Shared by the evaluations and the serving engine, so both build the same prompts for the same world.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from cm3leon.data.world import WorldConfig
from cm3leon.model import Transformer
from cm3leon.objectives.cm3 import CM3Config
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.vocab import Vocabulary
from cm3leon.training.pretrain import SUMMARY_FILE
from cm3leon.training.pretrain_data import PretrainDataConfig

# Data presets tried, in order, when a checkpoint has no training.json: the one whose world matches the VQ.
FALLBACK_DATA_PRESETS: tuple[str, ...] = ("shapes", "tiny")


@dataclass
class LoadedCheckpoint:
    """A loaded model directory with its VQ tokenizer and the data config (hence the world) it was trained on."""

    directory: Path
    model: Transformer
    vocab: Vocabulary
    image_tokenizer: ImageTokenizer
    data_config: PretrainDataConfig

    @property
    def world(self) -> WorldConfig:
        return self.data_config.world()


def answers_worked(directory: Path | str) -> bool:
    """Whether the model was tuned to work its VQA answers out (`cm3leon train sft --vqa-worked`: a description
    of the image, then "so the answer is X"), as its training.json records; such answers decode in two steps
    (`cm3leon.tasks.worked`)."""
    path = Path(directory) / SUMMARY_FILE
    if not path.exists():
        return False
    return bool(json.loads(path.read_text()).get("sft_data_config", {}).get("vqa_worked_answers", False))


def _recorded_data_config(directory: Path) -> PretrainDataConfig | None:
    """The data config `cm3leon train pretrain` recorded in DIR/training.json, if there is one."""
    path = directory / SUMMARY_FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text()).get("data_config")
    if not raw:
        return None
    known = {field.name for field in dataclasses.fields(PretrainDataConfig)}
    values = {key: value for key, value in raw.items() if key in known}
    values["cm3"] = CM3Config(**values.get("cm3", {}))
    return PretrainDataConfig(**values)


def checkpoint_data_config(directory: Path, seq_len: int, image_size: int) -> PretrainDataConfig:
    """The data config (hence the world) a model directory was trained on: its training.json, else the fallback
    preset whose world has the VQ's image size."""
    data_config = _recorded_data_config(Path(directory))
    if data_config is None:
        candidates = [PretrainDataConfig.preset(p, seq_len=seq_len) for p in FALLBACK_DATA_PRESETS]
        matching = [c for c in candidates if c.world().image_size == image_size]
        if not matching:
            raise ValueError(f"no world preset has the VQ tokenizer's image size {image_size}")
        data_config = matching[0]
    if data_config.world().image_size != image_size:
        raise ValueError(f"world images are {data_config.world().image_size}px, the VQ expects {image_size}")
    return data_config
