"""The instruction-tuned job kinds in process (no services): every handler's prompt is the training format's
prompt of the same case, id for id (cases from the world's own task generators, images encoded the way the SFT
corpus encodes them); `train sft` declares exactly what it trained; inputs the world cannot express fail with
the field named."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cm3leon.data.language import text_render_prompt
from cm3leon.data.questions import REASONING_KIND, qa_pairs, reasoning_pairs
from cm3leon.data.render import object_box, render
from cm3leon.data.tasks import PixelBox, make_edit, make_grounded, make_infill
from cm3leon.data.world import Scene, Split, World, WorldConfig
from cm3leon.inference.engine import Engine, EngineConfig
from cm3leon.inference.task_prompts import (
    edit_prompt,
    grounded_prompt,
    image_codes,
    infill_prompt,
    segmentation_prompt,
    structure_prompt,
    text_rendering_prompt,
    visual_question_prompt,
)
from cm3leon.kinds import (
    JOB_KINDS,
    Capabilities,
    Edit,
    GroundedGeneration,
    Infill,
    Segmentation,
    StructureGuided,
    TextRendering,
    VisualQuestion,
    kinds_taught_by,
    trained_capabilities,
)
from cm3leon.requests import GroundedObject, NormBox, Sampling
from cm3leon.tasks.infill import span_lengths
from cm3leon.tokenizers.vocab import ImageCodes
from cm3leon.training.sft_data import MIXTURE_ENTRIES
from cm3leon.training.task_corpus import encode_pictures
from tests.serving.sft_fixtures import build_tiny_sft_model_dir

CASES = 4  # cases per task: several object counts, edit kinds, question kinds


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(build_tiny_sft_model_dir(tmp_path_factory.mktemp("sft")), EngineConfig.preset("tiny"))


def training_codes(engine: Engine, pictures: list[tuple[Scene, bool]]) -> list[ImageCodes]:
    """Codes of (scene, segmentation?) pictures exactly as the SFT task corpus encodes them."""
    world, tokenizer = engine.formatter.world, engine.bundle.image_tokenizer
    grids = encode_pictures(pictures, world, tokenizer, batch_size=len(pictures), progress=False)
    return [ImageCodes.of(grid.reshape(-1).tolist()) for grid in grids]


def norm(box: PixelBox, world: WorldConfig) -> NormBox:
    return NormBox(*(value / world.image_size for value in box))


def test_sft_declares_exactly_the_kinds_it_trained(engine: Engine, tmp_path: Path) -> None:
    assert engine.bundle.capabilities.kinds == JOB_KINDS and engine.supported_kinds == JOB_KINDS
    assert all(kinds_taught_by(entry) for entry in MIXTURE_ENTRIES), "every mixture entry names the kinds it teaches"
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    mixture = {"pretrain": 0.5, "vqa": 0.3, "reasoning": 0.2, "edit": 0.0}
    assert trained_capabilities(pretrained, mixture).kinds == ("text_to_image", "caption", "visual_question")
    init = Capabilities(("caption", "edit"), {"edit": "shapes.edit_redraw"})
    init.save(tmp_path)  # an init that already declares kinds and policies keeps them
    assert trained_capabilities(tmp_path, {"seg2img": 1.0}) == Capabilities(
        ("caption", "edit", "structure_guided"), {"edit": "shapes.edit_redraw"}
    )
    with pytest.raises(ValueError, match="teaches no job kind"):
        trained_capabilities(tmp_path, {"dance": 1.0})


def test_the_engine_encodes_images_as_the_training_corpus(engine: Engine) -> None:
    scenes = World(engine.formatter.world).scenes(1, Split.TEST, CASES, text=False)
    expected = training_codes(engine, [(s, False) for s in scenes])
    assert [image_codes(engine, render(s, engine.formatter.world).image) for s in scenes] == expected


def test_question_prompts(engine: Engine) -> None:
    world, fmt = engine.formatter.world, engine.formatter
    scenes = World(world).scenes(2, Split.TEST, CASES, text=False)
    codes = training_codes(engine, [(s, False) for s in scenes])
    checked = 0
    for index, (scene, image) in enumerate(zip(scenes, codes, strict=True)):
        rng = random.Random(index)
        pixels = render(scene, world).image
        for qa in [*qa_pairs(scene, world, rng), *reasoning_pairs(scene, world, rng)]:
            expected = fmt.vqa(image, qa, with_answer=False).prompt
            explain = qa.kind == REASONING_KIND
            assert visual_question_prompt(engine, VisualQuestion(pixels, qa.question, explain)) == expected, qa
            wrapped = VisualQuestion(pixels, f"Question: {qa.question} Answer:")  # the whole training line
            assert visual_question_prompt(engine, wrapped) == expected
            checked += 1
    assert checked >= CASES * 5


def test_edit_segmentation_and_structure_prompts(engine: Engine) -> None:
    world, fmt = engine.formatter.world, engine.formatter
    edits = [make_edit(World(world), random.Random(i), Split.TEST) for i in range(CASES)]
    assert len({case.kind for case in edits}) > 1
    sources = training_codes(engine, [(case.source, False) for case in edits])
    for case, codes in zip(edits, sources, strict=True):
        request = Edit(render(case.source, world).image, case.instruction)
        assert edit_prompt(engine, request) == fmt.edit(case, codes, None).prompt
        assert segmentation_prompt(engine, Segmentation(request.image)) == fmt.segmentation(codes, None).prompt
    maps = training_codes(engine, [(case.source, True) for case in edits])
    for case, codes in zip(edits, maps, strict=True):
        request = StructureGuided(render(case.source, world).segmentation_image, case.instruction)
        assert structure_prompt(engine, request) == fmt.seg2img(codes, case.instruction, None).prompt


def test_infill_prompts(engine: Engine) -> None:
    world, fmt = engine.formatter.world, engine.formatter
    cases = [make_infill(World(world), random.Random(i), Split.TEST) for i in range(CASES)]
    images = training_codes(engine, [(case.scene, False) for case in cases])
    for case, codes in zip(cases, images, strict=True):
        pixels = render(case.scene, world).image
        for text, caption in ((case.caption, case.caption), ("", None)):
            request = Infill(pixels, (norm(case.region, world),), text)
            prompt, lengths = infill_prompt(engine, image_codes(engine, pixels), request, 0)
            assert prompt == fmt.infill(codes, case.region, caption).prompt
            assert lengths == span_lengths(case.region, world.image_size, engine.bundle.vocab)


def test_grounded_prompts(engine: Engine) -> None:
    world, fmt = engine.formatter.world, engine.formatter
    for index in range(CASES):
        spec = make_grounded(World(world), random.Random(index), Split.TEST)
        expected = fmt.grounded(spec, None).prompt
        objects = [GroundedObject(o.describe(), norm(object_box(o, world), world)) for o in spec.scene.objects]
        background = f"on a {spec.scene.background} background"
        assert grounded_prompt(engine, GroundedGeneration(tuple(objects), background)) == expected
        # Any order, with articles, the size left to the box: the same scene, so the same prompt.
        loose = [GroundedObject(f"a {o.description.split(' ', 1)[1]}", o.box) for o in reversed(objects)]
        assert grounded_prompt(engine, GroundedGeneration(tuple(loose), spec.scene.background)) == expected


def test_text_rendering_prompts(engine: Engine) -> None:
    world, fmt = engine.formatter.world, engine.formatter
    for index in range(CASES):
        scene = World(world).sample(random.Random(index), Split.TEST, text=True)
        expected = fmt.text_render(scene, None).prompt
        assert text_rendering_prompt(engine, TextRendering(text_render_prompt(scene, world))) == expected
        short = f"{scene.word.lower()} in {scene.word_colour} on {scene.background}"  # type: ignore[union-attr]
        assert text_rendering_prompt(engine, TextRendering(short)) == expected
    defaults = Scene(world.background_names[0], word="AB", word_colour=world.colour_names[0])
    assert text_rendering_prompt(engine, TextRendering("AB")) == fmt.text_render(defaults, None).prompt


def test_inputs_the_world_cannot_express_fail_naming_the_field(engine: Engine) -> None:
    world = engine.formatter.world
    image = render(World(world).scenes(3, Split.TEST, 1, text=False)[0], world).image
    corner, centre = NormBox(0.0, 0.0, 0.3, 0.3), NormBox(0.4, 0.4, 0.6, 0.6)
    bad = [
        (GroundedGeneration((GroundedObject("a large red hexagon", corner),)), r"objects\[0\].description.*'hexagon'"),
        (
            GroundedGeneration((GroundedObject("red circle", corner), GroundedObject("blue star", corner))),
            "one object per grid cell",
        ),
        (GroundedGeneration((GroundedObject("red circle", centre),), "a sunny day"), "prompt: name one background"),
        (TextRendering("HELLO"), "text: .*1 to 3 letters"),
        (TextRendering('"AB" in magenta'), "colour 'magenta'"),
        (Infill(image, (NormBox(0.0, 0.0, 1.0, 0.3),)), r"regions\[0\]: an infill region spanning every code column"),
        (Infill(image, (corner,), sampling=Sampling(temperature=1.0)), "infill decodes greedily"),
        (Edit(image, "make it blue", sampling=Sampling(retrieved_k=2)), "retrieved_k: edit"),
    ]
    for request, message in bad:
        with pytest.raises(ValueError, match=message):
            engine.run(request)


def test_formatter_world_is_the_recorded_one(engine: Engine) -> None:
    """The world comes from the SFT run's training.json: the tiny preset's 32 px shapes world, as the VQ says."""
    assert engine.formatter.world.image_size == engine.bundle.image_tokenizer.config.image_size == 32
    assert engine.formatter.world == engine.bundle.world == WorldConfig.preset("shapes32")
