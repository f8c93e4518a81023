"""Named presets: every config builds each of its presets through the one lookup, overrides win, and an unknown
name is refused with the choices listed."""

from __future__ import annotations

import dataclasses

import pytest

from cm3leon.bench.decode import DecodeBenchConfig
from cm3leon.bench.serve import ServeBenchConfig
from cm3leon.data.grid import GridStyle
from cm3leon.data.image_bank import ImageBankConfig
from cm3leon.data.oracle import OracleConfig
from cm3leon.data.world import WorldConfig
from cm3leon.decoding.params import GUIDED_PLAUSIBILITY, SamplingParams
from cm3leon.evaluation.caption_eval import CaptionEvalConfig
from cm3leon.evaluation.oracle_eval import DegradationConfig
from cm3leon.evaluation.perplexity_eval import PerplexityEvalConfig
from cm3leon.evaluation.sweep import SweepConfig
from cm3leon.evaluation.t2i_eval import T2IEvalConfig
from cm3leon.evaluation.task_cases import TaskEvalConfig
from cm3leon.inference.engine import EngineConfig
from cm3leon.model.config import DecoderConfig
from cm3leon.objectives.cm3 import CM3Config
from cm3leon.presets import Presets
from cm3leon.retrieval.config import MemoryConfig, RetrieverConfig, RetrieverTrainingConfig
from cm3leon.tokenizers.image import ImageTokenizerConfig
from cm3leon.tokenizers.text import TextTokenizerConfig
from cm3leon.training.pretrain_data import PretrainDataConfig
from cm3leon.training.task_corpus import TaskCorpusConfig
from cm3leon.training.trainer_config import TrainerConfig
from cm3leon.training.vq import VQTrainConfig

# Fields a preset cannot supply: they come from elsewhere at build time (the vocabulary, the model's length).
REQUIRED = {DecoderConfig: {"vocab_size": 512}, PretrainDataConfig: {"seq_len": 256}}
CONFIGS: list[type[Presets]] = [
    DecodeBenchConfig, ServeBenchConfig, GridStyle, ImageBankConfig, OracleConfig, WorldConfig, SamplingParams,
    CaptionEvalConfig, DegradationConfig, PerplexityEvalConfig, SweepConfig, T2IEvalConfig, TaskEvalConfig,
    EngineConfig, DecoderConfig, CM3Config, MemoryConfig, RetrieverConfig, RetrieverTrainingConfig,
    ImageTokenizerConfig, TextTokenizerConfig, PretrainDataConfig, TaskCorpusConfig, TrainerConfig, VQTrainConfig,
]


@pytest.mark.parametrize("config_class", CONFIGS, ids=lambda c: c.__name__)
def test_every_preset_sets_exactly_its_fields(config_class: type[Presets]) -> None:
    required = REQUIRED.get(config_class, {})
    assert config_class.PRESETS, "a Presets config declares at least one preset"
    for name, fields in config_class.PRESETS.items():
        config = config_class.preset(name, **required)
        for field, value in {**fields, **required}.items():
            assert getattr(config, field) == value, (name, field)
        for field in dataclasses.fields(config):  # type: ignore[arg-type]
            if field.name not in fields and field.name not in required:
                default = field.default_factory() if field.default is dataclasses.MISSING else field.default
                assert getattr(config, field.name) == default, (name, field.name)


@pytest.mark.parametrize("config_class", CONFIGS, ids=lambda c: c.__name__)
def test_an_unknown_preset_names_the_class_and_lists_the_choices(config_class: type[Presets]) -> None:
    with pytest.raises(ValueError) as refused:
        config_class.preset("no-such-preset", **REQUIRED.get(config_class, {}))
    message = str(refused.value)
    assert message.startswith(f"unknown {config_class.__name__} preset 'no-such-preset'; choose from: ")
    assert message.endswith(", ".join(config_class.PRESETS))


def test_overrides_win_over_the_preset_and_may_name_a_field_called_name() -> None:
    assert MemoryConfig.preset("tiny").name == "tiny"
    memory = MemoryConfig.preset("tiny", name="keys", candidates=4)
    assert (memory.name, memory.candidates, memory.path) == ("keys", 4, ":memory:")
    assert ImageBankConfig.preset("gpu", seed=5) == dataclasses.replace(ImageBankConfig.preset("gpu"), seed=5)
    assert DecoderConfig.preset("tiny", 300, max_seq_len=77) == DecoderConfig(
        vocab_size=300, d_model=64, n_layers=2, n_heads=4, ffn_dim=256, max_seq_len=77
    )


def test_preset_values_are_the_documented_ones() -> None:
    """A few presets other code relies on by value: the guided sampling default and the decoder sizes."""
    text_to_image = SamplingParams.preset("text_to_image")
    assert (text_to_image.method, text_to_image.guidance_scale, text_to_image.top_p) == ("cfg", 3.0, 0.9)
    assert text_to_image.guidance_plausibility == GUIDED_PLAUSIBILITY
    shapes = DecoderConfig.preset("shapes", 512)
    assert (shapes.d_model, shapes.n_layers, shapes.n_heads, shapes.max_seq_len) == (256, 6, 8, 640)
    assert WorldConfig.preset("tiny") == WorldConfig.preset("shapes") != WorldConfig.preset("shapes32")
