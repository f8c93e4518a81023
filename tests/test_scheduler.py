"""The continuous-batching scheduler on a tiny random model: same seed, same output (alone, joined at other steps,
static batch, `generate`), joining and leaving between steps, companion rows, cancellation, admission, threads."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from cm3leon.decoding import GenerationCancelled, GenerationRequest, SamplingParams, generate, no_rerank
from cm3leon.decoding.engine_core import SchedulerConfig, plan_unit
from cm3leon.decoding.scheduler import RequestHandle, Scheduler
from cm3leon.model import DecoderConfig, Transformer
from cm3leon.model.transformer import rows_linear
from cm3leon.tokenizers.text import TextTokenizer, TextTokenizerConfig
from cm3leon.tokenizers.vocab import ImageCodes, Vocabulary, VocabularyConfig

TRAINING_TEXT = [
    "a large red circle at the top left on a white background",
    "a small blue star in the center and a large green square at the bottom right",
    "how many objects are there? there are 2 circles",
] * 20
PROMPTS = ["a large red circle", "a small blue star in the center", "two circles", "a green square at the bottom right"]
ROW_LENGTH = 96


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    tokenizer = TextTokenizer.train(TRAINING_TEXT, TextTokenizerConfig.preset("tiny"))
    return Vocabulary(tokenizer, VocabularyConfig(codebook_size=64, image_grid=4))


@pytest.fixture(scope="module")
def model(vocab: Vocabulary) -> Transformer:
    """Random weights everywhere, so every prompt token and companion row changes the logits."""
    torch.manual_seed(0)
    model = Transformer(DecoderConfig.preset("tiny", vocab.size)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.1)
    return model


def mixed_requests(vocab: Vocabulary, count: int = 16) -> list[GenerationRequest]:
    """Requests with different methods, candidates, targets, top-p and plausibility (they share steps)."""
    source = ImageCodes(list(range(vocab.codes_per_image)))
    requests = []
    for index in range(count):
        method = ("cfg", "sample", "cdk", "pooled")[index % 4]
        params = SamplingParams(
            method=method,
            top_p=0.9 if index % 3 else 1.0,
            seed=100 + index,
            guidance_plausibility=0.1 * (index % 2),
            num_candidates=2 if method == "pooled" else 1,
            max_new_tokens=6 + index,
        )
        if index % 7 == 6:  # an edit: three streams
            params = params.replace(method="cfg", image_guidance_scale=1.5, source_copy_bias=1.0, num_candidates=1)
            requests.append(GenerationRequest(prompt=["a red star", source, "make it blue"], params=params))
        else:
            target = "text" if index % 5 == 0 else "image"
            requests.append(GenerationRequest(prompt=[PROMPTS[index % 4]], target=target, params=params))
    return requests


def scheduler(model: Transformer, vocab: Vocabulary, **overrides: object) -> Scheduler:
    return Scheduler(model, vocab, SchedulerConfig(**{"max_rows": 48, "row_length": ROW_LENGTH, **overrides}))


def alone(sched: Scheduler, request: GenerationRequest) -> RequestHandle:
    handle = sched.submit(request, scorer=no_rerank, keep_logits=True)
    while not handle.done():
        sched.step()
    return handle


def same_logits(first: RequestHandle, second: RequestHandle) -> bool:
    steps = zip(first.step_logits, second.step_logits, strict=True)
    return len(first.step_logits) > 0 and all(torch.equal(a, b) for a, b in steps)


def test_same_seed_same_output_alone_joined_static_and_generate(model: Transformer, vocab: Vocabulary) -> None:
    requests = mixed_requests(vocab)
    sched = scheduler(model, vocab)
    singles = [alone(sched, request) for request in requests]
    joined = []
    for index, request in enumerate(requests):  # each joins 0-2 steps after the previous one
        joined.append(sched.submit(request, scorer=no_rerank, keep_logits=True))
        for _ in range(index % 3):
            sched.step()
    while not all(handle.done() for handle in joined):
        sched.step()
    static = sched.run_batch(requests, scorer=no_rerank)
    reference = [generate(model, vocab, [request], scorer=no_rerank)[0] for request in requests]
    for single, other, batch, ref in zip(singles, joined, static, reference, strict=True):
        assert same_logits(single, other)  # bit for bit: the step never depends on the batch mates
        assert single.result().candidates == other.result().candidates == batch.candidates
        assert [c.token_ids for c in single.result().candidates] == [c.token_ids for c in ref.candidates]
        assert single.result().seed == ref.seed


def test_without_batch_invariance_tokens_still_match(model: Transformer, vocab: Vocabulary) -> None:
    """The faster mode (and CUDA's) keeps every row's computation separate; only last bits may differ, which on
    these requests changes no token."""
    requests = mixed_requests(vocab, 8)
    invariant = scheduler(model, vocab).run_batch(requests, scorer=no_rerank)
    fast = scheduler(model, vocab, batch_invariant=False)
    handles = []
    for index, request in enumerate(requests):
        handles.append(fast.submit(request, scorer=no_rerank))
        for _ in range(index % 2):
            fast.step()
    while not all(handle.done() for handle in handles):
        fast.step()
    assert [h.result().candidates for h in handles] == [result.candidates for result in invariant]


def test_rows_linear_rounds_every_row_the_same_in_any_batch() -> None:
    """`forward_rows`' matrix products: a row's bits never depend on how many rows share the product. Plain
    `F.linear` on CPU does depend on it for few rows (another kernel); that half is skipped where it does not."""
    generator = torch.Generator().manual_seed(0)
    for inputs, outputs in ((64, 192), (256, 1024), (1024, 256)):
        weight = torch.randn((outputs, inputs), generator=generator)
        rows = torch.randn((300, inputs), generator=generator)
        everything = rows_linear(rows, weight)
        for count in (1, 2, 3, 7, 16, 33, 128, 129, 257):
            assert torch.equal(rows_linear(rows[:count], weight), everything[:count])
        assert torch.allclose(everything, F.linear(rows, weight), rtol=1e-4, atol=1e-4)
    plain = [torch.equal(F.linear(rows[:count], weight), F.linear(rows, weight)[:count]) for count in (1, 2, 4, 8)]
    if all(plain):
        pytest.skip("this backend's F.linear happens to be batch-invariant too")


def test_run_batch_keeps_generates_contract(model: Transformer, vocab: Vocabulary) -> None:
    """Results, scores (default likelihood scorer), images decoded as one batch, progress up to the end."""
    requests = [r for r in mixed_requests(vocab, 6) if r.target == "image"]

    def pixels(codes: torch.Tensor) -> torch.Tensor:
        return (codes * 37 % 256).to(torch.uint8).unsqueeze(-1).expand(*codes.shape, 3)

    calls: list[tuple[int, int]] = []
    results = scheduler(model, vocab).run_batch(requests, image_decoder=pixels, progress=lambda *c: calls.append(c))
    reference = generate(model, vocab, requests, image_decoder=pixels)
    for ours, theirs in zip(results, reference, strict=True):
        assert ours.token_ids == theirs.token_ids and ours.best_index == theirs.best_index
        assert [c.score for c in ours.candidates] == pytest.approx([c.score for c in theirs.candidates])
        assert [img.tobytes() for img in ours.images] == [img.tobytes() for img in theirs.images]
    assert calls[-1] == (vocab.codes_per_image + 1,) * 2 and calls == sorted(calls)


def test_requests_join_and_leave_between_steps(model: Transformer, vocab: Vocabulary) -> None:
    sched = scheduler(model, vocab)
    image = GenerationRequest(prompt=[PROMPTS[0]], params=SamplingParams(seed=1))  # 2 rows, 17 steps
    short = GenerationRequest(
        prompt=[PROMPTS[1]], target="text", params=SamplingParams(method="sample", seed=2, max_new_tokens=3)
    )
    first = sched.submit(image, scorer=no_rerank)
    for _ in range(4):
        sched.step()
    assert first.steps_done == 4 and sched.stats["rows_in_use"] == 2
    second = sched.submit(short, scorer=no_rerank)
    sched.step()  # the newcomer is prefilled and takes its first step in the same iteration as the runner
    assert (first.steps_done, second.steps_done) == (5, 1)
    assert sched.stats["running"] == 2 and sched.stats["rows_in_use"] == 3
    while not second.done():
        sched.step()
    assert first.steps_done == 4 + second.steps_done and not first.done()
    assert sched.stats["rows_in_use"] == 2  # the short one's row was freed at once
    while not first.done():
        sched.step()
    assert (sched.stats["rows_in_use"], sched.stats["running"], sched.stats["tokens_in_flight"]) == (0, 0, 0)
    assert len(first.result().token_ids) == vocab.codes_per_image + 1


def test_work_counts_prefill_per_request_and_shared_decode_steps(model: Transformer, vocab: Vocabulary) -> None:
    """Prefill is counted per request (rows x prompt positions); a decode step once for all the rows it runs."""
    sched = scheduler(model, vocab)
    requests = [GenerationRequest(prompt=[PROMPTS[i]], params=SamplingParams(seed=i)) for i in range(2)]  # 2 rows each
    units = [plan_unit(vocab, request, torch.device("cpu")) for request in requests]
    before = sched.work
    handles = [sched.submit(request, scorer=no_rerank) for request in requests]
    while not all(handle.done() for handle in handles):
        sched.step()
    work = sched.work
    assert before.decode_steps == 0 and work is not sched.work, "a copy"
    assert work.prefill_token_rows == sum(unit.num_rows * unit.prompt_length for unit in units)
    steps = units[0].num_steps
    assert work.decode_steps == steps - 1, "both joined at once: one shared forward per step after the prefill's"
    assert work.decode_rows == 4 * work.decode_steps
    assert work.prefill_s > 0 and work.decode_s > 0


@pytest.mark.parametrize(
    ("params", "rows"),
    [
        (SamplingParams(method="sample", seed=3), 1),
        (SamplingParams(method="cfg", seed=3), 2),
        (SamplingParams(method="cfg", image_guidance_scale=1.5, seed=3), 3),
        (SamplingParams(method="pooled", num_candidates=2, seed=3), 4),  # a CFG candidate + a CD-K one
    ],
)
def test_companion_rows_are_admitted_stepped_and_evicted_together(
    model: Transformer, vocab: Vocabulary, params: SamplingParams, rows: int
) -> None:
    sched = scheduler(model, vocab, max_rows=rows + 1)
    source = ImageCodes(list(range(vocab.codes_per_image)))
    request = GenerationRequest(prompt=["a red star", source, "make it blue"], params=params)
    blocker = GenerationRequest(prompt=[PROMPTS[0]], params=SamplingParams(method="cfg", seed=4))  # 2 rows
    first = sched.submit(blocker, scorer=no_rerank)
    sched.step()
    handle = sched.submit(request, scorer=no_rerank)
    sched.step()
    # All of the request's rows or none: with 2 rows taken and rows + 1 in the pool, it waits whole.
    assert (sched.stats["rows_in_use"], sched.stats["waiting"]) == (2, 1)
    while not first.done():
        sched.step()
    sched.step()
    assert sched.stats["rows_in_use"] == rows and sched.stats["running"] == 1
    while not handle.done():
        sched.step()
    assert sched.stats["rows_in_use"] == 0
    reference = generate(model, vocab, [request], scorer=no_rerank)[0]
    assert [c.token_ids for c in handle.result().candidates] == [c.token_ids for c in reference.candidates]


def test_cancellation_frees_rows_within_one_step(model: Transformer, vocab: Vocabulary) -> None:
    sched = scheduler(model, vocab)
    stay = sched.submit(GenerationRequest(prompt=[PROMPTS[0]], params=SamplingParams(seed=5)), scorer=no_rerank)
    flag = threading.Event()
    leave = sched.submit(
        GenerationRequest(prompt=[PROMPTS[1]], params=SamplingParams(seed=6)), should_cancel=flag.is_set
    )
    dropped = sched.submit(GenerationRequest(prompt=[PROMPTS[2]], params=SamplingParams(seed=7)))
    sched.step()
    assert sched.stats["rows_in_use"] == 6
    flag.set()
    dropped.cancel()
    sched.step()
    assert sched.stats["rows_in_use"] == 2 and leave.done() and dropped.done()
    for handle in (leave, dropped):
        with pytest.raises(GenerationCancelled):
            handle.result()
    while not stay.done():
        sched.step()
    assert stay.result().token_ids == alone(scheduler(model, vocab), stay.request).result().token_ids


def test_admission_waits_for_room_and_rejects_what_never_fits(model: Transformer, vocab: Vocabulary) -> None:
    sched = scheduler(model, vocab, max_rows=4)
    requests = [GenerationRequest(prompt=[text], params=SamplingParams(seed=8)) for text in PROMPTS[:3]]
    handles = [sched.submit(request, scorer=no_rerank) for request in requests]
    sched.step()
    assert (sched.stats["running"], sched.stats["waiting"], sched.stats["rows_in_use"]) == (2, 1, 4)
    while not handles[0].done():
        sched.step()
    sched.step()
    assert (sched.stats["running"], sched.stats["waiting"]) == (1, 0)  # the first two left together
    while not all(handle.done() for handle in handles):
        sched.step()

    three_streams = SamplingParams(method="cfg", image_guidance_scale=1.5, num_candidates=2)
    with pytest.raises(ValueError, match="needs 6 cache rows.*max_rows"):
        sched.submit(GenerationRequest(prompt=[PROMPTS[0]], params=three_streams))
    long_text = SamplingParams(method="sample", max_new_tokens=ROW_LENGTH)
    with pytest.raises(ValueError, match="row_length"):
        sched.submit(GenerationRequest(prompt=[PROMPTS[0]], target="text", params=long_text))
    tight = scheduler(model, vocab, max_tokens=20)
    with pytest.raises(ValueError, match="max_tokens"):
        tight.submit(requests[0])


def test_chunked_prefill_keeps_running_rows_stepping(model: Transformer, vocab: Vocabulary) -> None:
    sched = scheduler(model, vocab, prefill_chunk_tokens=8)
    runner = sched.submit(GenerationRequest(prompt=[PROMPTS[0]], params=SamplingParams(seed=9)), scorer=no_rerank)
    while sched.stats["prefilling"]:
        sched.step()
    long_prompt = " ".join(PROMPTS * 2)
    late = sched.submit(GenerationRequest(prompt=[long_prompt], params=SamplingParams(seed=10)), scorer=no_rerank)
    before = runner.steps_done
    sched.step()
    sched.step()
    assert sched.stats["prefilling"] == 1 and runner.steps_done == before + 2  # one chunk per step, no stall
    while not (runner.done() and late.done()):
        sched.step()
    for handle in (runner, late):
        reference = generate(model, vocab, [handle.request], scorer=no_rerank)[0]
        assert handle.result().token_ids == reference.token_ids


def test_concurrent_submission_from_threads(model: Transformer, vocab: Vocabulary) -> None:
    requests = mixed_requests(vocab, 12)
    expected = [alone(scheduler(model, vocab), request).result().token_ids for request in requests]
    sched = scheduler(model, vocab)
    sched.start()
    results: dict[int, list[int]] = {}

    def job(index: int) -> None:
        results[index] = sched.submit(requests[index], scorer=no_rerank).result(timeout=60).token_ids

    try:
        threads = [threading.Thread(target=job, args=(index,)) for index in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sched.stop()
    assert [results[index] for index in range(len(requests))] == expected
    assert sched.stats["rows_in_use"] == 0


def test_kv_cache_bytes_per_row(model: Transformer, vocab: Vocabulary) -> None:
    config = model.config
    expected = 2 * config.n_layers * config.n_heads * (ROW_LENGTH + 1) * config.head_dim * 4  # fp32, + scratch
    assert scheduler(model, vocab).stats["kv_bytes_per_row"] == expected
