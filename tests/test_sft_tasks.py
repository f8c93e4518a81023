"""Task formats of instruction tuning: every prompt round-trips through the vocabulary back to its case, the loss
covers the output only, and the output parsers recover the ground truth (from ground-truth codes and text, and
from rendered ground-truth pictures where the untrained tiny VQ's reconstruction could not be judged)."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pretrain_helpers import tiny_image_tokenizer, tiny_vocabulary
from sft_helpers import tiny_sft_config, tiny_sft_source, tiny_task_corpus

from cm3leon.data.language import detailed_caption, parse_caption
from cm3leon.data.oracle import Oracle
from cm3leon.data.questions import final_answer, qa_pairs, reasoning_pairs
from cm3leon.data.render import render
from cm3leon.data.tasks import grounded_spec_of_scene, parse_edit_instruction
from cm3leon.decoding.prompts import document_prompt_ids
from cm3leon.tasks.formats import EDIT_HEADER, SEGMENT_HEADER, STRUCTURE_HEADER, TASKS, SceneDocument
from cm3leon.tasks.infill import fill_region, infill_spans, region_codes_from_output
from cm3leon.tasks.parsing import (
    grounded_spec,
    image_output,
    infill_result,
    question_and_answer,
    segmentation_map,
    segmentation_scores,
    text_answer,
)
from cm3leon.tokenizers.vocab import ImageCodes, Vocabulary
from cm3leon.training.sft_data import SFTBatches
from cm3leon.training.task_corpus import TaskCorpus


@pytest.fixture(scope="module")
def vocab_and_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Vocabulary, TaskCorpus]:
    image_tokenizer = tiny_image_tokenizer()
    return tiny_vocabulary(image_tokenizer), tiny_task_corpus(image_tokenizer, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def source(vocab_and_corpus: tuple[Vocabulary, TaskCorpus]) -> SFTBatches:
    return tiny_sft_source(*vocab_and_corpus)


def test_every_task_has_output_only_loss_and_ends_with_eos(source: SFTBatches) -> None:
    vocab = source.vocab
    for task in TASKS:
        for seed in range(5):
            example = source.example(task, random.Random(seed))
            assert example.task == task and example.prompt[0] == vocab.bos_id
            assert example.output[-1] == vocab.eos_id and vocab.eos_id not in example.prompt
            assert example.loss_mask == [False] * len(example.prompt) + [True] * len(example.output)
            if example.target == "image":
                assert example.prompt[-1] == vocab.break_id and image_output(example.output, vocab) is not None


def test_image_prompts_are_the_decoders_own_prompts(source: SFTBatches) -> None:
    """Training prompts of image tasks are exactly what `document_prompt_ids` builds at inference."""
    vocab, corpus, fmt = source.vocab, source.corpus, source.formatter
    case = corpus.edits[0]
    source_image, target_image = corpus.edit_images(0)
    example = fmt.edit(case, source_image, target_image)
    assert example.prompt == document_prompt_ids(vocab, [EDIT_HEADER, source_image, case.instruction], "image")
    scene, image = corpus.scenes.scenes[0], corpus.scenes.image_codes(0)
    caption = detailed_caption(scene, source.world)
    t2i = fmt.t2i(scene, caption, image)
    assert t2i.ids == SceneDocument(scene, 0, caption, image, image_first=False).token_ids(vocab)
    assert fmt.t2i(scene, caption, None).prompt == t2i.prompt


def test_prompts_decode_back_to_their_cases(source: SFTBatches) -> None:
    vocab, corpus, fmt, world = source.vocab, source.corpus, source.formatter, source.world
    for index in range(len(corpus.edits)):
        case = corpus.edits[index]
        src, tgt = corpus.edit_images(index)
        segments = vocab.decode_document(fmt.edit(case, src, tgt).ids)
        assert segments[0] == EDIT_HEADER and segments[1] == src and segments[3] == tgt
        assert parse_edit_instruction(segments[2], case.source, world) == case.target
    rng = random.Random(0)
    for index in range(len(corpus.scenes)):
        scene, image, seg = corpus.scenes.scenes[index], corpus.scenes.image_codes(index), corpus.segmentation(index)
        caption = detailed_caption(scene, world, rng)
        assert vocab.decode_document(fmt.caption(image, caption).ids) == [image, caption]
        assert vocab.decode_document(fmt.segmentation(image, seg).ids) == [SEGMENT_HEADER, image, seg]
        structure = vocab.decode_document(fmt.seg2img(seg, caption, image).ids)
        assert structure[:2] == [STRUCTURE_HEADER, seg] and structure[3] == image
        assert parse_caption(structure[2], world) == scene
        for qa in [*qa_pairs(scene, world, rng), *reasoning_pairs(scene, world, rng)]:
            text = vocab.decode_document(fmt.vqa(image, qa).ids)[1]
            assert question_and_answer(text) == (qa.question, qa.answer)
        spec = grounded_spec_of_scene(scene, world)
        assert grounded_spec(fmt.grounded(spec, image).prompt, vocab, world) == spec
    for index in range(len(corpus.words)):
        scene = corpus.words.scenes[index]
        segments = vocab.decode_document(fmt.text_render(scene, corpus.words.image_codes(index)).ids)
        assert parse_caption(segments[0], world) == scene


def test_vqa_session_starts_as_the_single_question_document_and_trains_only_the_answers(
    vocab_and_corpus: tuple[Vocabulary, TaskCorpus],
) -> None:
    vocab, corpus = vocab_and_corpus
    source = tiny_sft_source(vocab, corpus, vqa_questions_per_image=4)
    fmt, world = source.formatter, source.world
    rng = random.Random(3)
    for index in range(len(corpus.scenes)):
        scene, image = corpus.scenes.scenes[index], corpus.scenes.image_codes(index)
        qas = qa_pairs(scene, world, rng)[:4]
        session, single = fmt.vqa_session(image, qas), fmt.vqa(image, qas[0])
        # What inference decodes from and must answer is exactly the one-question document.
        assert session.prompt == single.prompt and session.ids[: len(single.ids)] == single.ids
        assert session.loss_mask[: len(single.ids)] == single.loss_mask
        # Targets are the answers with their <eos>, nothing else: one <eos> per question.
        targets = [t for t, m in zip(session.ids, session.loss_mask, strict=True) if m]
        assert targets.count(vocab.eos_id) == len(qas) and session.output[-1] == vocab.eos_id
        answers = vocab.decode_text(targets).split()
        assert answers == [word for qa in qas for word in qa.answer.split()]
        given = vocab.decode_text([t for t, m in zip(session.output, session.output_targets, strict=True) if not m])
        assert given.count("Question:") == len(qas) - 1 and qas[-1].question in given
    drawn = [source.example("vqa", random.Random(seed)) for seed in range(8)]
    assert all(sum(e.loss_mask) > 0 and e.ids.count(vocab.eos_id) >= 3 for e in drawn)
    with pytest.raises(ValueError, match="vqa_questions_per_image"):
        tiny_sft_config(vqa_questions_per_image=0)
    with pytest.raises(ValueError, match="output_targets"):
        replace(drawn[0], output_targets=(True,))


def test_worked_vqa_documents_describe_the_image_then_answer_right(
    vocab_and_corpus: tuple[Vocabulary, TaskCorpus],
) -> None:
    vocab, corpus = vocab_and_corpus
    for per_image in (1, 3):
        source = tiny_sft_source(vocab, corpus, vqa_questions_per_image=per_image, vqa_worked_answers=True)
        world = source.world
        for seed in range(6):
            example = source.example("vqa", random.Random(seed))
            # `example` draws the scene first, as here.
            scene = corpus.scenes.scenes[random.Random(seed).randrange(len(corpus.scenes))]
            # A scene's answers do not depend on which subject the rng picked: collect them by question.
            truth = {qa.question: qa.answer for s in range(40) for qa in qa_pairs(scene, world, random.Random(s))}
            question = vocab.decode_document(example.prompt)[-1]
            targets = [t for t, m in zip(example.ids, example.loss_mask, strict=True) if m]
            ends = [i for i, t in enumerate(targets) if t == vocab.eos_id]
            worked = [vocab.decode_text(targets[a + 1 : b]).strip() for a, b in zip([-1, *ends], ends, strict=False)]
            assert len(worked) == min(per_image, len(truth))
            description = detailed_caption(scene, world)
            assert all(a.startswith(f"{description}, so the answer is ") for a in worked)
            first_question = next(q for q in truth if q in question)
            assert final_answer(worked[0]) == truth[first_question]


def test_read_vqa_documents_hide_the_image_and_train_only_the_final_answer(
    vocab_and_corpus: tuple[Vocabulary, TaskCorpus],
) -> None:
    vocab, corpus = vocab_and_corpus
    source = tiny_sft_source(vocab, corpus, vqa_worked_answers=True, vqa_read_fraction=1.0)
    image_ids = set(vocab.encode_image(corpus.scenes.image_codes(0).codes))
    for seed in range(8):
        example = source.example("vqa", random.Random(seed))
        scene = corpus.scenes.scenes[random.Random(seed).randrange(len(corpus.scenes))]
        assert not image_ids & set(example.prompt) and vocab.mask_id in example.prompt
        output = vocab.decode_text(example.output[:-1]).strip()
        assert output.startswith(f"{detailed_caption(scene, source.world)}, so the answer is ")
        targets = [t for t, m in zip(example.ids, example.loss_mask, strict=True) if m]
        assert targets[-1] == vocab.eos_id and vocab.decode_text(targets[:-1]).strip() == final_answer(output)
    with pytest.raises(ValueError, match="vqa_worked_answers"):
        tiny_sft_config(vqa_read_fraction=0.5)
    with pytest.raises(ValueError, match="vqa_read_fraction"):
        tiny_sft_config(vqa_worked_answers=True, vqa_read_fraction=1.5)


def test_infill_masks_each_code_row_of_the_region_and_reassembles(source: SFTBatches) -> None:
    vocab, corpus, fmt, world = source.vocab, source.corpus, source.formatter, source.world
    for cell in range(world.num_cells):
        image, region = corpus.scenes.image_codes(cell), world.cell_box(cell)
        spans = infill_spans(region, world.image_size, vocab)
        for caption in (None, "a caption"):
            example = fmt.infill(image, region, caption)
            assert example.prompt[-2:] == [vocab.infill_id, vocab.mask_sentinel_ids[0]]
            sentinels = [t for t in example.prompt if t in vocab.mask_sentinel_ids]
            assert len(sentinels) == len(spans) + 1  # one per row in the body, <mask:0> after <infill>
            region_codes = region_codes_from_output(example.output, vocab)
            assert len(region_codes) == sum(end - start for start, end in spans)
            assert infill_result(example.prompt, example.output, vocab) == image
            assert fill_region(image, region, world.image_size, vocab, region_codes) == image
            hidden = [image.codes[i] for start, end in spans for i in range(start, end)]
            assert region_codes == hidden
    wrong = fmt.infill(corpus.scenes.image_codes(0), world.cell_box(4), None)
    assert infill_result(wrong.prompt, wrong.output[1:], vocab) is None  # a span one code short


def test_text_parsers_recover_ground_truth_answers(source: SFTBatches) -> None:
    vocab, corpus, fmt, world = source.vocab, source.corpus, source.formatter, source.world
    rng = random.Random(1)
    for index in range(len(corpus.scenes)):
        scene, image = corpus.scenes.scenes[index], corpus.scenes.image_codes(index)
        for qa in qa_pairs(scene, world, rng):
            assert text_answer(fmt.vqa(image, qa).output, vocab) == qa.answer
        for qa in reasoning_pairs(scene, world, rng):
            answer = text_answer(fmt.vqa(image, qa).output, vocab)
            assert final_answer(answer) == final_answer(qa.answer) is not None
        caption = detailed_caption(scene, world, rng)
        assert parse_caption(text_answer(fmt.caption(image, caption).output, vocab), world) == scene
    assert image_output([vocab.eos_id], vocab) is None


def test_image_parsers_recover_ground_truth_from_rendered_pictures(source: SFTBatches) -> None:
    world = source.world
    oracle = Oracle(world)
    for scene in [*source.corpus.scenes.scenes[:8], *source.corpus.words.scenes[:4]]:
        rendered = render(scene, world)
        assert oracle.parse(rendered.image, expect_text=scene.is_text) == scene
        classes = segmentation_map(rendered.segmentation_image, world)
        assert np.array_equal(classes, rendered.segmentation)
        assert segmentation_scores(classes, rendered.segmentation, world) == (1.0, 1.0)
        shifted = np.roll(rendered.segmentation, 3, axis=1)
        miou, accuracy = segmentation_scores(shifted, rendered.segmentation, world)
        assert miou < 1.0 and accuracy < 1.0


def test_guidance_dropout_shows_the_decoders_unconditional_streams(
    vocab_and_corpus: tuple[Vocabulary, TaskCorpus],
) -> None:
    vocab = vocab_and_corpus[0]
    text_only = tiny_sft_source(*vocab_and_corpus, text_dropout=1.0, all_dropout=0.0)
    everything = tiny_sft_source(*vocab_and_corpus, text_dropout=0.0, all_dropout=1.0)
    for seed in range(4):
        example = text_only.example("edit", random.Random(seed))
        dropped = text_only.guidance_dropout(example, random.Random(seed))
        assert dropped.output == example.output
        kinds = [vocab.kind_of(t) for t in dropped.prompt]
        assert "text" not in kinds and kinds.count("image") == vocab.codes_per_image
        assert dropped.prompt.count(vocab.mask_id) == 2  # the header and the instruction
        unconditional = everything.guidance_dropout(example, random.Random(seed))
        assert [vocab.kind_of(t) for t in unconditional.prompt].count("image") == 0
        answer = text_only.example("vqa", random.Random(seed))
        assert text_only.guidance_dropout(answer, random.Random(seed)) == answer  # text tasks never dropped


def test_corpus_cache_is_reused_and_keyed_by_the_vq(tmp_path: Path) -> None:
    first = tiny_task_corpus(tiny_image_tokenizer(seed=0), tmp_path)
    again = tiny_task_corpus(tiny_image_tokenizer(seed=0), tmp_path)
    assert len(list(tmp_path.glob("task_corpus-*.npz"))) == 1
    assert np.array_equal(first.edit_codes, again.edit_codes) and first.edits == again.edits
    assert first.scenes.scenes == again.scenes.scenes and first.words.scenes == again.words.scenes
    tiny_task_corpus(tiny_image_tokenizer(seed=1), tmp_path)
    assert len(list(tmp_path.glob("task_corpus-*.npz"))) == 2



def _prompt_image(vocab: Vocabulary, prompt: list[int]) -> tuple[int, ...]:
    return next(tuple(part.codes) for part in vocab.decode_document(prompt) if isinstance(part, ImageCodes))


def test_word_captions_read_a_word_image_from_the_word_pool(vocab_and_corpus: tuple[Vocabulary, TaskCorpus]) -> None:
    vocab, corpus = vocab_and_corpus
    source = tiny_sft_source(vocab, corpus, caption_word_fraction=1.0)
    words = {tuple(corpus.words.image_codes(i).codes): s for i, s in enumerate(corpus.words.scenes)}
    for seed in range(8):
        example = source.example("caption", random.Random(seed))
        scene = words[_prompt_image(vocab, example.prompt)]
        read = parse_caption(vocab.decode_text(example.output[:-1]).strip(), source.world)
        assert read is not None and read.key() == scene.key()
    # Without the fraction, captions describe the scene pool as before.
    scenes = {tuple(corpus.scenes.image_codes(i).codes) for i in range(len(corpus.scenes))}
    plain = tiny_sft_source(vocab, corpus)
    for seed in range(8):
        example = plain.example("caption", random.Random(seed))
        assert _prompt_image(vocab, example.prompt) in scenes and '"' not in vocab.decode_text(example.output)
    with pytest.raises(ValueError, match="caption_word_fraction"):
        tiny_sft_config(caption_word_fraction=1.5)
