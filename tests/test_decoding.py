"""Decoding pipeline: guidance and CD-K formulas, processors, constraints, reproducibility, batching, reranking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cm3leon.decoding import (
    ChannelScorer,
    GenerationCancelled,
    GenerationRequest,
    LikelihoodScorer,
    ModalityConstraint,
    SamplingParams,
    SourceCopyPrior,
    StopCriteria,
    TokenSelector,
    TopK,
    TopP,
    cdk_candidates,
    cdk_scores,
    classifier_free_guidance,
    continuation_log_likelihoods,
    generate,
    generate_image_codes,
    last_image_ids,
    plan_batch,
    prompt_streams,
    query_image,
    score_continuation,
    three_stream_guidance,
)
from cm3leon.model import DecoderConfig, Transformer
from cm3leon.tokenizers.text import TextTokenizer, TextTokenizerConfig
from cm3leon.tokenizers.vocab import ImageCodes, Vocabulary, VocabularyConfig

TRAINING_TEXT = [
    "a large red circle at the top left on a white background",
    "a small blue star in the center and a large green square at the bottom right",
    "how many objects are there? there are 2 circles",
] * 20
NEG_INF = float("-inf")



@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    tokenizer = TextTokenizer.train(TRAINING_TEXT, TextTokenizerConfig.preset("tiny"))
    return Vocabulary(tokenizer, VocabularyConfig(codebook_size=64, image_grid=4))


@pytest.fixture(scope="module")
def model(vocab: Vocabulary) -> Transformer:
    """Random weights everywhere (the paper init's zero residual outputs would hide the prompt's influence)."""
    torch.manual_seed(0)
    model = Transformer(DecoderConfig.preset("tiny", vocab.size)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.1)
    return model


def eos_after_trigger_model(vocab: Vocabulary, trigger: int) -> Transformer:
    """Hand-set weights: greedy text decoding emits `trigger` after any other token and `<eos>` after it.

    With the paper init the blocks add nothing (zero output projections), so logits = lm_head(norm(embedding)).
    """
    model = Transformer(DecoderConfig.preset("tiny", vocab.size, tie_embeddings=False)).eval()
    usual, after_trigger = torch.randn((2, model.config.d_model), generator=torch.Generator().manual_seed(0))
    width = (model.config.d_model,)
    with torch.no_grad():
        assert model.position_embedding is not None
        model.position_embedding.weight.zero_()
        model.token_embedding.weight[:] = usual
        model.token_embedding.weight[trigger] = after_trigger
        model.lm_head.weight.zero_()
        model.lm_head.weight[trigger] = F.layer_norm(usual, width)
        model.lm_head.weight[vocab.eos_id] = F.layer_norm(after_trigger, width)
    return model


def image_request(text: str = "a red circle", **params: object) -> GenerationRequest:
    return GenerationRequest(prompt=[text], target="image", params=SamplingParams(**params))  # type: ignore[arg-type]


# --- formulas on hand-made numbers -----------------------------------------------------------------------------
def test_classifier_free_guidance_formula() -> None:
    cond = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    uncond = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    torch.testing.assert_close(classifier_free_guidance(cond[:1], uncond[:1], 3.0), torch.tensor([[3.0, 4.0, 7.0]]))
    per_row = classifier_free_guidance(cond, uncond, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(per_row, torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 7.0]]))


def test_three_stream_formula_and_its_two_stream_special_case() -> None:
    full, image_only, uncond = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 2.0]])
    # u + 1.5 (i - u) + 7.5 (f - i) = [0 + 1.5 + 7.5, 2 - 1.5 - 7.5]
    mixed = three_stream_guidance(full, image_only, uncond, text_scale=7.5, image_scale=1.5)
    torch.testing.assert_close(mixed, torch.tensor([[9.0, -7.0]]))
    two_stream = three_stream_guidance(full, uncond, uncond, text_scale=3.0, image_scale=1.5)
    torch.testing.assert_close(two_stream, classifier_free_guidance(full, uncond, 3.0))


def test_cdk_candidate_set_and_scores() -> None:
    p_expert = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    p_amateur = torch.tensor([[0.25, 0.25, 0.1, 0.2, 0.2]])
    log_expert, log_amateur = p_expert.log(), p_amateur.log()
    # k = 2: threshold 0.6 * 0.2 = 0.12 -> {0, 1, 2}; k = 1: 0.5 * 0.5 = 0.25 -> {0}
    assert cdk_candidates(log_expert, 0.6, 2).tolist() == [[True, True, True, False, False]]
    assert cdk_candidates(log_expert, 0.5, 1).tolist() == [[True, False, False, False, False]]
    scores = cdk_scores(log_expert, log_amateur, 0.6, 2)
    expected = torch.tensor([[math.log(2.0), math.log(0.8), math.log(1.5), NEG_INF, NEG_INF]])
    torch.testing.assert_close(scores, expected)
    # Per-group parameters, and tokens with p_exp = 0 (forbidden) are never candidates even at alpha tiny.
    both = torch.cat([log_expert, torch.tensor([[0.0, NEG_INF, NEG_INF, NEG_INF, NEG_INF]])])
    sets = cdk_candidates(both, torch.tensor([0.6, 1e-6]), torch.tensor([2, 3]))
    assert sets.tolist() == [[True, True, True, False, False], [True, False, False, False, False]]


def test_top_k_and_top_p_per_row() -> None:
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 2.0, 0.0]])
    filtered = TopK(torch.tensor([2, 0]))(scores)
    assert torch.isinf(filtered[0]).tolist() == [True, False, False, True]
    assert torch.equal(filtered[1], scores[1])
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3).log()
    kept = ~torch.isinf(TopP(torch.tensor([0.7, 0.45, 1.0]))(logits))
    assert kept.tolist() == [[True, True, False, False], [True, False, False, False], [True, True, True, True]]


def test_selector_inverse_cdf_and_greedy() -> None:
    probs = torch.tensor([[0.2, 0.0, 0.8]] * 3 + [[0.0, 0.5, 0.5]])
    uniforms = torch.tensor([[0.1], [0.25], [0.1], [0.0]], dtype=torch.float64)
    tokens = TokenSelector(uniforms, greedy=torch.tensor([False, False, True, False]))(probs, step=0)
    assert tokens.tolist() == [0, 2, 2, 1]  # a zero-probability token is never drawn, even at u = 0


def test_modality_constraint_and_stop_criteria(vocab: Vocabulary) -> None:
    constraint = ModalityConstraint(vocab, torch.tensor([True, False]))
    allowed = constraint.allowed()
    assert allowed[0].nonzero().flatten().tolist() == list(vocab.image_ids)
    text_allowed = set(allowed[1].nonzero().flatten().tolist())
    assert text_allowed == {*vocab.text_ids, *vocab.location_ids, vocab.eos_id, vocab.break_id}
    for _ in range(vocab.codes_per_image):
        assert constraint.in_image_block().tolist() == [True, False]
        constraint.update(torch.tensor([vocab.image_ids.start, vocab.text_ids.start]))
    assert constraint.allowed()[0].nonzero().flatten().tolist() == [vocab.eos_id]
    stop = StopCriteria(vocab, max_new=torch.tensor([5, 2]))
    text = vocab.text_ids.start
    assert stop.apply(torch.tensor([vocab.eos_id, text]), step=0).tolist() == [vocab.eos_id, text]
    assert stop.apply(torch.tensor([text, text]), step=1).tolist() == [vocab.pad_id, text]
    assert stop.finished.tolist() == [True, True]  # the first by <eos>, the second by max length


# --- prompts ---------------------------------------------------------------------------------------------------
def test_unconditional_streams_mask_text_and_keep_images(vocab: Vocabulary) -> None:
    streams = prompt_streams(vocab, GenerationRequest(prompt=["Image of a chameleon:"], target="image"))
    assert streams.full[0] == vocab.bos_id and streams.full[-1] == vocab.break_id
    assert streams.text_masked == [vocab.bos_id, vocab.mask_id, vocab.break_id]
    codes = ImageCodes.of(range(vocab.codes_per_image))
    edit = prompt_streams(vocab, GenerationRequest(prompt=[codes, "make it blue"], target="image"))
    image_ids = vocab.encode_image(codes.codes)
    assert edit.text_masked == [vocab.bos_id, *image_ids, vocab.break_id, vocab.mask_id, vocab.break_id]
    assert edit.all_masked == [vocab.bos_id, vocab.mask_id, vocab.break_id, vocab.mask_id, vocab.break_id]
    plan = plan_batch(vocab, [GenerationRequest(prompt=[codes, "make it blue"], params=SamplingParams.preset("edit"))])
    assert plan.rows == [edit.full, edit.text_masked, edit.all_masked]


# --- generation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(method="sample", seed=1),
        SamplingParams(method="cfg", seed=2, top_k=10),
        SamplingParams(method="cdk", seed=3),
        SamplingParams(method="pooled", seed=4, num_candidates=2, top_p=0.9),
        SamplingParams.preset("edit").replace(seed=5),
    ],
)
def test_image_blocks_have_exactly_the_grid_of_codes_then_eos(
    model: Transformer, vocab: Vocabulary, params: SamplingParams
) -> None:
    codes = ImageCodes.of([3] * vocab.codes_per_image)
    result = generate(model, vocab, [GenerationRequest(prompt=["a blue star", codes, "make it red"], params=params)])[0]
    for candidate in result.candidates:
        assert len(candidate.token_ids) == vocab.codes_per_image + 1
        assert all(token in vocab.image_ids for token in candidate.token_ids[:-1])
        assert candidate.token_ids[-1] == vocab.eos_id
    assert len(result.segments) == 1 and isinstance(result.segments[0], ImageCodes)


def test_text_stops_at_eos_or_max_length(vocab: Vocabulary) -> None:
    trigger = vocab.text_ids.start + 5
    model = eos_after_trigger_model(vocab, trigger)
    greedy = SamplingParams(method="sample", temperature=0.0, max_new_tokens=8)
    prompt = ["how many"]
    stopped = generate(model, vocab, [GenerationRequest(prompt=prompt, target="text", params=greedy)])[0]
    assert stopped.token_ids == [trigger, vocab.eos_id]
    assert stopped.text == vocab.decode_text([trigger])
    short = greedy.replace(max_new_tokens=1)
    cut = generate(model, vocab, [GenerationRequest(prompt=prompt, target="text", params=short)])[0]
    assert cut.token_ids == [trigger]


def reference_greedy_image(model: Transformer, vocab: Vocabulary, request: GenerationRequest, steps: int) -> list[int]:
    """A plain loop without cache or batching: full forwards per stream, the formulas written out."""
    params = request.params
    streams = prompt_streams(vocab, request)
    image_ids = torch.tensor(list(vocab.image_ids))
    generated: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            last = {
                name: model(torch.tensor([ids + generated]))[0, -1, image_ids]
                for name, ids in (
                    ("full", streams.full),
                    ("image_only", streams.text_masked),
                    ("uncond", streams.all_masked),
                )
            }
        if params.method == "cdk":
            log_expert, log_amateur = last["full"].log_softmax(-1), last["image_only"].log_softmax(-1)
            kth = log_expert.sort(descending=True).values[params.cdk_k - 1]
            candidates = log_expert >= math.log(params.cdk_alpha) + kth
            scores = torch.where(candidates, log_expert - log_amateur, torch.tensor(NEG_INF))
        elif params.image_guidance_scale is not None:
            full, image_only, uncond = last["full"], last["image_only"], last["uncond"]
            scores = uncond + params.image_guidance_scale * (image_only - uncond)
            scores = scores + params.guidance_scale * (full - image_only)
        else:
            scores = last["image_only"] + params.guidance_scale * (last["full"] - last["image_only"])
        generated.append(int(image_ids[scores.argmax()]))
    return generated


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(method="cfg", guidance_scale=5.0, temperature=0.0),
        SamplingParams(method="cdk", cdk_alpha=0.1, cdk_k=3, temperature=0.0),
        SamplingParams.preset("edit").replace(temperature=0.0),
    ],
)
def test_greedy_guided_decoding_matches_a_reference_loop(
    model: Transformer, vocab: Vocabulary, params: SamplingParams
) -> None:
    request = GenerationRequest(prompt=[ImageCodes.of(range(vocab.codes_per_image)), "make it blue"], params=params)
    steps = 5
    expected = reference_greedy_image(model, vocab, request, steps)
    unguided = generate(
        model,
        vocab,
        [GenerationRequest(prompt=request.prompt, params=SamplingParams(temperature=0.0, method="sample"))],
    )[0]
    assert unguided.token_ids[:steps] != expected  # guidance changes the outcome, so this test can see it
    assert generate(model, vocab, [request])[0].token_ids[:steps] == expected


def test_random_text_respects_the_text_constraint(model: Transformer, vocab: Vocabulary) -> None:
    requests = [
        GenerationRequest(prompt=["how many"], target="text", params=SamplingParams(method=m, seed=s, max_new_tokens=6))
        for s, m in enumerate(["sample", "cfg", "cdk"])
    ]
    for result in generate(model, vocab, requests):
        ids = result.token_ids
        assert 1 <= len(ids) <= 6
        assert all(t in vocab.text_ids or t in vocab.location_ids for t in ids[:-1])
        assert len(ids) == 6 or ids[-1] in (vocab.eos_id, vocab.break_id)


def test_same_seed_same_output_and_different_seeds_differ(model: Transformer, vocab: Vocabulary) -> None:
    first = generate(model, vocab, [image_request(seed=7)])[0]
    again = generate(model, vocab, [image_request(seed=7)])[0]
    other = generate(model, vocab, [image_request(seed=8)])[0]
    assert first.token_ids == again.token_ids and first.seed == 7
    assert first.token_ids != other.token_ids
    greedy = [generate(model, vocab, [image_request(seed=s, temperature=0.0)])[0].token_ids for s in (1, 2)]
    assert greedy[0] == greedy[1]


def test_a_request_decodes_the_same_alone_and_batched(model: Transformer, vocab: Vocabulary) -> None:
    target = image_request("a red circle", method="pooled", num_candidates=4, top_p=0.9, seed=11)
    longer_text = GenerationRequest(
        prompt=["a small blue star in the center and a large green square"],
        target="text",
        params=SamplingParams(seed=5, max_new_tokens=30),
    )
    edit = GenerationRequest(
        prompt=[ImageCodes.of([1] * vocab.codes_per_image), "make it blue"],
        params=SamplingParams.preset("edit").replace(seed=3),
    )
    alone = generate(model, vocab, [target])[0]
    batched = generate(model, vocab, [longer_text, target, edit])[1]
    assert [c.token_ids for c in batched.candidates] == [c.token_ids for c in alone.candidates]
    assert [c.method for c in alone.candidates] == ["cfg", "cfg", "cdk", "cdk"]
    assert batched.score == pytest.approx(alone.score, abs=1e-4)


def test_guidance_at_scale_one_or_only_on_image_tokens_reduces_to_plain_sampling(
    model: Transformer, vocab: Vocabulary
) -> None:
    plain = generate(model, vocab, [image_request(method="sample", seed=9)])[0]
    scale_one = generate(model, vocab, [image_request(method="cfg", guidance_scale=1.0, seed=9)])[0]
    assert scale_one.token_ids == plain.token_ids
    text = dict(prompt=["how many"], target="text")
    sample = SamplingParams(method="sample", seed=4, max_new_tokens=10)
    image_only_cfg = sample.replace(method="cfg", guidance_scale=5.0, guide_text_tokens=False)
    outputs = [generate(model, vocab, [GenerationRequest(**text, params=p)])[0] for p in (sample, image_only_cfg)]  # type: ignore[arg-type]
    assert outputs[0].token_ids == outputs[1].token_ids


def test_full_guidance_plausibility_keeps_only_the_conditional_argmax(model: Transformer, vocab: Vocabulary) -> None:
    """Plausibility 1 leaves one candidate per step, the conditional stream's best token: strongly guided sampling
    then draws exactly what greedy conditional decoding draws, whatever the scale and the seed."""
    greedy = generate(model, vocab, [image_request(method="sample", temperature=0.0, seed=1)])[0]
    guided = generate(
        model, vocab, [image_request(method="cfg", guidance_scale=7.0, guidance_plausibility=1.0, seed=2)]
    )[0]
    assert guided.token_ids == greedy.token_ids
    unconstrained = generate(model, vocab, [image_request(method="cfg", guidance_scale=7.0, seed=2)])[0]
    assert unconstrained.token_ids != greedy.token_ids  # the constraint, not the scale, made them equal
    partly = generate(
        model, vocab, [image_request(method="cfg", guidance_scale=7.0, guidance_plausibility=0.0, seed=2)]
    )[0]
    assert partly.token_ids == unconstrained.token_ids  # 0 is off


def test_guidance_plausibility_is_validated() -> None:
    with pytest.raises(ValueError, match="guidance_plausibility"):
        SamplingParams(guidance_plausibility=1.5)


def test_source_copy_prior_adds_its_bias_at_the_reference_code_of_the_position() -> None:
    reference = torch.tensor([[3, 5, 7], [2, 2, 2]])
    prior = SourceCopyPrior(reference, torch.tensor([2.0, 0.0]))
    scores = torch.zeros((2, 8))
    scores[0, 6] = NEG_INF
    out = prior(scores, codes_written=torch.tensor([1, 0]), in_image=torch.tensor([True, True]))
    assert out[0].tolist() == [0, 0, 0, 0, 0, 2.0, NEG_INF, 0]  # position 1 -> code 5
    assert out[1].tolist() == [0.0] * 8  # bias 0: off
    past_the_block = prior(scores, codes_written=torch.tensor([3, 0]), in_image=torch.tensor([False, True]))
    assert torch.equal(past_the_block, scores)  # after the image (<eos> step) nothing is added
    forbidden = prior(scores, codes_written=torch.tensor([2, 0]), in_image=torch.tensor([True, True]))
    assert forbidden[0, 6] == NEG_INF and forbidden[0, 7] == 2.0


def test_last_image_ids_finds_the_last_complete_image_block(vocab: Vocabulary) -> None:
    first, second = ImageCodes.of([1] * vocab.codes_per_image), ImageCodes.of(list(range(vocab.codes_per_image)))
    ids = vocab.encode_document(["edit", first, "make it blue", second, "then"], bos=True, eos=False)
    assert last_image_ids(vocab, ids) == vocab.encode_image(second.codes)
    image_only = vocab.encode_document([first], bos=False, eos=False)
    assert last_image_ids(vocab, image_only) == vocab.encode_image(first.codes)
    assert last_image_ids(vocab, vocab.encode_document(["no image"], bos=True, eos=False)) is None


def test_a_large_source_copy_bias_copies_the_source_and_zero_is_off(model: Transformer, vocab: Vocabulary) -> None:
    source = ImageCodes.of([(5 * i + 3) % vocab.config.codebook_size for i in range(vocab.codes_per_image)])
    prompt = ["edit", source, "make it blue"]

    def edit(**params: object) -> list[int]:
        request = GenerationRequest(prompt=prompt, target="image", params=SamplingParams(  # type: ignore[arg-type]
            method="cfg", image_guidance_scale=1.5, seed=3, **params))
        return generate(model, vocab, [request])[0].token_ids[: vocab.codes_per_image]

    assert edit(source_copy_bias=1e4) == vocab.encode_image(source.codes)
    plain = edit()
    assert plain != vocab.encode_image(source.codes)
    assert edit(source_copy_bias=0.0) == plain
    mild = edit(source_copy_bias=3.0)
    copied = sum(a == b for a, b in zip(mild, vocab.encode_image(source.codes), strict=True))
    # A mild bias tips near-ties only: more of the source than without it, not all of it.
    assert sum(a == b for a, b in zip(plain, vocab.encode_image(source.codes), strict=True)) < copied
    assert copied < vocab.codes_per_image
    with pytest.raises(ValueError, match="source_copy_bias needs a prompt holding an image"):
        generate(model, vocab, [image_request(source_copy_bias=1.0)])
    with pytest.raises(ValueError, match="source_copy_bias"):
        SamplingParams(source_copy_bias=-1.0)


def test_progress_reaches_total_and_cancellation_stops(model: Transformer, vocab: Vocabulary) -> None:
    calls: list[tuple[int, int]] = []
    generate(model, vocab, [image_request(seed=1)], progress=lambda done, total: calls.append((done, total)))
    total = vocab.codes_per_image + 1
    assert calls[-1] == (total, total) and [done for done, _ in calls] == list(range(1, total + 1))
    early: list[tuple[int, int]] = []
    eos_model = eos_after_trigger_model(vocab, vocab.text_ids.start)
    params = SamplingParams(method="sample", temperature=0.0, max_new_tokens=40)
    generate(
        eos_model,
        vocab,
        [GenerationRequest(prompt=["a"], target="text", params=params)],
        progress=lambda d, t: early.append((d, t)),
    )
    assert early[-1] == (40, 40) and len(early) < 40  # stopped early at the periodic finished check

    checks = iter([False, False, True])
    cancelled_calls: list[int] = []
    with pytest.raises(GenerationCancelled):
        generate(
            model,
            vocab,
            [image_request(seed=1)],
            progress=lambda done, total: cancelled_calls.append(done),
            should_cancel=lambda: next(checks),
        )
    assert cancelled_calls == [1, 2]


def test_reranking_returns_the_best_scored_candidate(model: Transformer, vocab: Vocabulary) -> None:
    request = image_request(method="pooled", num_candidates=4, top_p=0.9, seed=21)
    result = generate(model, vocab, [request])[0]
    scores = [c.score for c in result.candidates]
    assert result.score == max(scores) and result.token_ids == result.candidates[result.best_index].token_ids
    prompt = prompt_streams(vocab, request).full
    assert result.score == pytest.approx(score_continuation(model, vocab, prompt, result.token_ids), abs=1e-4)

    def fewest_distinct_codes(_request: GenerationRequest, _prompt: object, candidates: list[list[int]]) -> list[float]:
        return [-float(len(set(candidate))) for candidate in candidates]

    custom = generate(model, vocab, [request], scorer=fewest_distinct_codes)[0]
    distinct = [len(set(c.token_ids)) for c in custom.candidates]
    assert len(set(custom.token_ids)) == min(distinct)
    assert custom.best_index == distinct.index(min(distinct))


def test_continuation_likelihood_matches_a_manual_forward(model: Transformer, vocab: Vocabulary) -> None:
    prompt, continuation = [vocab.bos_id, *vocab.encode_text("a red")], vocab.encode_text(" circle at the top")
    with torch.no_grad():
        log_probs = model(torch.tensor([prompt + continuation])).log_softmax(-1)[0]
    expected = sum(log_probs[len(prompt) - 1 + i, token].item() for i, token in enumerate(continuation))
    assert score_continuation(model, vocab, prompt, continuation) == pytest.approx(expected, abs=1e-4)
    batched = continuation_log_likelihoods(model, vocab, [prompt, prompt[:1]], [continuation, continuation[:2]])
    assert batched[0].item() == pytest.approx(expected, abs=1e-4)
    assert batched[1].item() == pytest.approx(score_continuation(model, vocab, prompt[:1], continuation[:2]), abs=1e-4)
    per_token = LikelihoodScorer(model, vocab, per_token=True)(image_request(), prompt, [continuation])
    assert per_token[0] == pytest.approx(expected / len(continuation), abs=1e-4)


def test_image_decoder_ids_prompts_and_length_limit(model: Transformer, vocab: Vocabulary) -> None:
    grid = vocab.image_grid

    def codes_as_pixels(codes: torch.Tensor) -> torch.Tensor:  # (B, g, g) -> (B, 2g, 2g, 3) uint8
        pixels = (codes * 4).to(torch.uint8).repeat_interleave(2, 1).repeat_interleave(2, 2)
        return pixels.unsqueeze(-1).expand(-1, -1, -1, 3)

    result = generate(model, vocab, [image_request(seed=3)], image_decoder=codes_as_pixels)[0]
    assert len(result.images) == 1 and result.images[0].size == (2 * grid, 2 * grid)
    first_code = result.segments[0].codes[0]  # type: ignore[union-attr]
    assert result.images[0].getpixel((0, 0)) == (first_code * 4,) * 3

    ids = prompt_streams(vocab, image_request()).full
    codes = generate_image_codes(model, vocab, [ids, ids], SamplingParams(seed=3))
    assert codes.shape == (2, grid, grid)
    assert codes[0].flatten().tolist() == list(result.segments[0].codes)  # type: ignore[union-attr]

    too_long = GenerationRequest(prompt=["a"], target="text", params=SamplingParams(max_new_tokens=10_000))
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, vocab, [too_long])
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError):
        GenerationRequest(prompt=["a"], prompt_ids=[1, 2])


def test_channel_scorer_adds_the_image_likelihood_and_skips_non_captions(model: Transformer, vocab: Vocabulary) -> None:
    image = ImageCodes.of(range(vocab.codes_per_image))
    other = ImageCodes.of([5] * vocab.codes_per_image)
    # A retrieved document (with another image) comes before the query: the query's image is the one explained.
    context = vocab.encode_document(["a small blue star", other])
    prompt = context + vocab.encode_document([image], eos=False) + [vocab.break_id]
    assert query_image(vocab, prompt) == image and query_image(vocab, vocab.encode_document(["text only"])) is None
    red, blue = [*vocab.encode_text("a red circle"), vocab.eos_id], [*vocab.encode_text("a blue star"), vocab.eos_id]
    unfinished = vocab.encode_text("a red")  # cut off by the token budget: no <eos>
    candidates = [red, blue, red, unfinished, [vocab.eos_id]]
    scorer = ChannelScorer(model, vocab, direct_weight=0.5)
    scores = scorer(GenerationRequest(prompt_ids=prompt, target="text"), prompt, candidates)
    image_ids = vocab.encode_image(image.codes)
    for index, caption in ((0, "a red circle"), (1, "a blue star")):
        caption_prompt = vocab.encode_document([caption], eos=False) + [vocab.break_id]
        channel = score_continuation(model, vocab, caption_prompt, image_ids)
        direct = score_continuation(model, vocab, prompt, candidates[index])
        assert scores[index] == pytest.approx(channel + 0.5 * direct, abs=1e-3)
    assert scores[2] == scores[0]  # duplicates score alike (and are scored once)
    assert scores[3] == NEG_INF and scores[4] == NEG_INF
    # Not a caption of an image: the fallback scores it.
    text_prompt = vocab.encode_document(["a red"], eos=False)
    fallback = ChannelScorer(model, vocab, fallback=lambda request, prompt_ids, cands: [7.0] * len(cands))
    assert fallback(GenerationRequest(prompt_ids=text_prompt, target="text"), text_prompt, [red]) == [7.0]
    with pytest.raises(ValueError, match="direct_weight"):
        ChannelScorer(model, vocab, direct_weight=-1.0)
