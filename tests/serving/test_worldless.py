"""A checkpoint without a world (its images are a size no world preset has, as a paper-size preset's are) serves
every kind it declares through the engine's generic path: prompts from its vocabulary and image size alone, text
and boxes read as given, the segmentation map as drawn. A kind it does not declare is refused by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cm3leon.bundle import ModelBundle
from cm3leon.checkpoint import save_checkpoint
from cm3leon.inference.engine import Engine, EngineConfig
from cm3leon.inference.task_prompts import grounded_prompt, text_rendering_prompt
from cm3leon.kinds import (
    JOB_KINDS,
    Capabilities,
    Caption,
    Edit,
    GroundedGeneration,
    Infill,
    JobRequest,
    Segmentation,
    StructureGuided,
    TextRendering,
    TextToImage,
    VisualQuestion,
)
from cm3leon.requests import GroundedObject, NormBox, Sampling, UnsupportedJobKind
from cm3leon.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from tests.sft_helpers import tiny_model, tiny_vocabulary

# No world preset draws 24 px images (`bundle.FALLBACK_WORLD_PRESETS`), so the checkpoint records no world.
IMAGE_SIZE = 24


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    root = tmp_path_factory.mktemp("worldless")
    torch.manual_seed(0)
    config = dataclasses.replace(ImageTokenizerConfig.preset("tiny"), image_size=IMAGE_SIZE)
    image_tokenizer = ImageTokenizer(config).eval()
    vocab = tiny_vocabulary(image_tokenizer)
    model = tiny_model(vocab).eval()
    with torch.no_grad():  # zero-initialised output projections would make every logit equal
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    directory = save_checkpoint(root / "model", model, vocab, image_tokenizer.save_pretrained(root / "vq"))
    Capabilities(JOB_KINDS).save(directory)
    return Engine(ModelBundle.load(directory), EngineConfig.preset("tiny"))


def picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


SAMPLING = Sampling(seed=1, num_candidates=2)
REQUESTS: dict[str, JobRequest] = {
    "text_to_image": TextToImage("a lighthouse at dusk", num_images=2, sampling=SAMPLING),
    "caption": Caption(picture(0), sampling=SAMPLING),
    "visual_question": VisualQuestion(picture(1), "what is in the picture?", sampling=Sampling(seed=1)),
    "edit": Edit(picture(2), "make the sky purple", sampling=SAMPLING),
    "infill": Infill(picture(3), (NormBox(0.25, 0.25, 0.5, 0.5),), "a window", Sampling(seed=1)),
    "segmentation": Segmentation(picture(4)),
    "structure_guided": StructureGuided(picture(5), "a red barn", SAMPLING),
    "grounded_generation": GroundedGeneration(
        (GroundedObject("a tall tree", NormBox(0.0, 0.0, 0.5, 1.0)), GroundedObject("a cat", NormBox(0.5, 0.5, 1, 1))),
        "in the snow",
        SAMPLING,
    ),
    "text_rendering": TextRendering("write HELLO in blue", SAMPLING),
}


def test_a_checkpoint_whose_images_no_world_draws_records_no_world(engine: Engine) -> None:
    assert engine.bundle.world is None and engine.bundle.image_size == IMAGE_SIZE
    assert engine.supported_kinds == JOB_KINDS
    assert set(REQUESTS) == set(JOB_KINDS)


@pytest.mark.parametrize("kind", JOB_KINDS)
def test_every_declared_kind_runs_on_the_generic_path(engine: Engine, kind: str) -> None:
    result = engine.run(REQUESTS[kind])
    if kind in ("caption", "visual_question"):
        assert isinstance(result.text, str) and not result.images
    else:
        expected = 2 if kind == "text_to_image" else 1
        assert len(result.images) == expected
        assert all(image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8 for image in result.images)
    assert result.prompt_tokens > 0 and result.generated_tokens > 0


def test_generic_prompts_carry_the_request_text_as_given(engine: Engine) -> None:
    vocab = engine.bundle.vocab
    grounded = vocab.decode_document(grounded_prompt(engine, REQUESTS["grounded_generation"]))  # type: ignore[arg-type]
    texts = [segment for segment in grounded if isinstance(segment, str)]
    assert texts == ["Make an image with a tall tree", " and a cat", " in the snow"]
    rendering = vocab.decode_document(text_rendering_prompt(engine, REQUESTS["text_rendering"]))  # type: ignore[arg-type]
    assert rendering == ["write HELLO in blue"]


def test_a_kind_the_checkpoint_does_not_declare_is_refused(engine: Engine) -> None:
    declared = tuple(kind for kind in JOB_KINDS if kind != "infill")
    narrower = Engine(dataclasses.replace(engine.bundle, capabilities=Capabilities(declared)), engine.config)
    with pytest.raises(UnsupportedJobKind, match="'infill' is not supported: .*does not declare it"):
        narrower.run(REQUESTS["infill"])


@pytest.mark.parametrize(
    ("kind", "policy"),
    [
        ("edit", "shapes.edit_redraw"),
        ("segmentation", "shapes.caption_check"),
        ("grounded_generation", "shapes.scene_caption"),
        ("text_rendering", "shapes.word_choice"),
    ],
)
def test_a_shapes_policy_on_a_model_without_the_world_is_refused(engine: Engine, kind: str, policy: str) -> None:
    capabilities = Capabilities(JOB_KINDS, {kind: policy})
    named = Engine(dataclasses.replace(engine.bundle, capabilities=capabilities), engine.config)
    with pytest.raises(UnsupportedJobKind, match=f"'{kind}' is not supported: .*records no world"):
        named.run(REQUESTS[kind])
    assert named.run(REQUESTS[kind], plain=True).images  # the generic path still serves it
