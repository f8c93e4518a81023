"""Two-step decoding of worked VQA answers (`cm3leon.tasks.worked`): the description is scored as a caption of
the image, and the answer is decoded again after the chosen description."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import torch
from pretrain_helpers import tiny_data_config, tiny_image_tokenizer, tiny_model, tiny_vocabulary

from cm3leon.data.language import detailed_caption
from cm3leon.data.questions import QA, worked_answer
from cm3leon.data.world import Split, World
from cm3leon.decoding import GenerationRequest, GenerationResult, SamplingParams, Scorer
from cm3leon.decoding.channel import DEFAULT_DIRECT_WEIGHT, NOT_A_CAPTION
from cm3leon.decoding.params import CandidateResult
from cm3leon.decoding.prompts import document_prompt_ids
from cm3leon.decoding.rerank import continuation_log_likelihoods, no_rerank
from cm3leon.model import Transformer
from cm3leon.tasks.formats import TaskFormatter
from cm3leon.tasks.worked import WORKED_SEPARATOR, DescriptionScorer, answer_worked, description_of
from cm3leon.tokenizers.vocab import ImageCodes, Vocabulary

WORLD = tiny_data_config().world()


@pytest.fixture(scope="module")
def model_and_vocab() -> tuple[Transformer, Vocabulary]:
    vocab = tiny_vocabulary(tiny_image_tokenizer())
    model = tiny_model(vocab).eval()
    with torch.no_grad():  # the zero-initialised output projections would make every candidate score the same
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model, vocab


def _case(vocab: Vocabulary) -> tuple[ImageCodes, str, QA, list[int]]:
    scene = World(WORLD).scenes(0, Split.TEST, 1, text=False)[0]
    image = ImageCodes.of(random.Random(0).randrange(vocab.config.codebook_size) for _ in range(vocab.codes_per_image))
    qa = QA("what color is the background?", scene.background, "background")
    prompt = TaskFormatter(vocab, WORLD).vqa(image, qa, with_answer=False).prompt
    return image, detailed_caption(scene, WORLD), qa, prompt


def test_description_is_the_text_before_the_last_final_answer() -> None:
    worked = "a red circle at the top left on a white background, so the answer is top left"
    assert description_of(worked) == "a red circle at the top left on a white background"
    assert description_of("red") is None and description_of(", so the answer is red") is None


def test_description_scorer_reads_the_description_as_a_caption_of_the_image(
    model_and_vocab: tuple[Transformer, Vocabulary],
) -> None:
    model, vocab = model_and_vocab
    image, description, qa, prompt = _case(vocab)
    worked = [*vocab.encode_text(f" {worked_answer(qa, description).answer}"), vocab.eos_id]
    unworked = [*vocab.encode_text(f" {qa.answer}"), vocab.eos_id]
    candidates = [worked, unworked, worked[:-1], list(worked)]
    request = GenerationRequest(prompt_ids=prompt, target="text")
    scores = DescriptionScorer(model, vocab)(request, prompt, candidates)
    # Channel: log p(image | description) as a text->image document; direct: the whole answer given the prompt.
    caption_prompt = document_prompt_ids(vocab, [description], "image")
    channel = continuation_log_likelihoods(model, vocab, [caption_prompt], [vocab.encode_image(image.codes)])
    direct = continuation_log_likelihoods(model, vocab, [prompt], [worked])
    assert scores[0] == pytest.approx(float(channel[0] + DEFAULT_DIRECT_WEIGHT * direct[0]), rel=1e-4)
    assert scores[1] == scores[2] == NOT_A_CAPTION  # no description; cut off before <eos>
    assert scores[3] == scores[0]  # a repeated sample scores the same (scored once)


def _result(vocab: Vocabulary, texts: Sequence[str], best: int) -> GenerationResult:
    candidates = [CandidateResult([*vocab.encode_text(f" {t}"), vocab.eos_id], "sample", 0.0) for t in texts]
    ids = candidates[best].token_ids
    return GenerationResult(ids, vocab.decode_document(ids), texts[best], [], 0.0, best, candidates, 0)


def test_the_answer_is_decoded_again_after_the_chosen_description(
    model_and_vocab: tuple[Transformer, Vocabulary],
) -> None:
    """The runner stands in for a model that writes worked answers (an untrained one writes none): it returns
    scripted samples for the first pass and records what the second pass is asked."""
    _, vocab = model_and_vocab
    _, description, qa, prompt = _case(vocab)
    calls: list[tuple[list[GenerationRequest], Scorer]] = []
    sampled = [f"{description}, so the answer is green", "a blue star, so the answer is red"]

    def run(requests: Sequence[GenerationRequest], scorer: Scorer) -> list[GenerationResult]:
        calls.append((list(requests), scorer))
        if len(calls) == 1:
            return [_result(vocab, sampled, best=0), _result(vocab, ["no description"], best=0)][: len(requests)]
        return [_result(vocab, [qa.answer], best=0)] * len(requests)

    scorer = DescriptionScorer(*model_and_vocab)
    params = SamplingParams(method="sample", temperature=1.0, num_candidates=2, max_new_tokens=48)
    answers = answer_worked(vocab, [prompt, prompt], params, [5, 6], run, scorer)
    (first, first_scorer), (second, second_scorer) = calls
    assert first_scorer is scorer and [r.params.seed for r in first] == [5, 6]
    # Only the prompt whose pick had a description is asked again: after it, greedily, unscored.
    [again] = second
    assert list(again.prompt_ids) == [*prompt, *vocab.encode_text(f" {description}{WORKED_SEPARATOR}")]
    assert again.params.temperature == 0.0 and again.params.num_candidates == 1 and second_scorer is no_rerank
    assert answers[0].text == f"{description}{WORKED_SEPARATOR} {qa.answer}"
    assert answers[1].text == "no description"
    sampled_tokens = sum(len(vocab.encode_text(f" {t}")) + 1 for t in sampled)
    assert answers[0].generated_tokens == sampled_tokens + len(vocab.encode_text(f" {qa.answer}")) + 1
    # One candidate: one plain pass, nothing to score or redo.
    calls.clear()
    assert answer_worked(vocab, [prompt], params.replace(num_candidates=1), [5], run, scorer)[0].text == sampled[0]
    assert len(calls) == 1 and calls[0][1] is no_rerank
