"""CM3's causally masked transform: exact reassembly, spans inside modality runs, and which tokens carry loss."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from cm3leon.objectives.cm3 import CM3Config, CM3Masker, sample_poisson
from cm3leon.tokenizers.text import TextTokenizer, TextTokenizerConfig
from cm3leon.tokenizers.vocab import ImageCodes, Locations, Vocabulary, VocabularyConfig

WORDS = ["a", "large", "red", "circle", "at", "the", "top", "left", "on", "white", "background", "blue", "star"]


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    texts = [" ".join(random.Random(i).choices(WORDS, k=12)) for i in range(200)]
    tokenizer = TextTokenizer.train(texts, TextTokenizerConfig.preset("tiny"))
    config = VocabularyConfig(codebook_size=32, image_grid=4, num_mask_sentinels=8, location_bins=8)
    return Vocabulary(tokenizer, config)


def random_document(vocab: Vocabulary, rng: random.Random) -> list[int]:
    """Text, image and location segments in random order, as `encode_document` joins them."""
    segments: list[str | ImageCodes | Locations] = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["text", "image", "locations"])
        if kind == "text":
            segments.append(" ".join(rng.choices(WORDS, k=rng.randint(1, 10))))
        elif kind == "image":
            codes = [rng.randrange(vocab.config.codebook_size) for _ in range(vocab.codes_per_image)]
            segments.append(ImageCodes.of(codes))
        else:
            segments.append(Locations(tuple(rng.randrange(vocab.config.location_bins) for _ in range(4))))
    return vocab.encode_document(segments)


def test_poisson_sampler_has_the_right_mean() -> None:
    rng = random.Random(0)
    draws = [sample_poisson(rng, 1.0) for _ in range(20_000)]
    assert abs(sum(draws) / len(draws) - 1.0) < 0.03
    # P(0) = e^-1 = 0.368 for Poisson(1).
    assert abs(draws.count(0) / len(draws) - 0.368) < 0.015


def test_reassembly_restores_every_random_document(vocab: Vocabulary) -> None:
    masker = CM3Masker(vocab, CM3Config.preset("always"))
    rng = random.Random(1)
    span_counts: Counter[int] = Counter()
    for _ in range(1000):
        ids = random_document(vocab, rng)
        masked = masker(ids, rng)
        span_counts[len(masked.spans)] += 1
        assert masker.reassemble(masked.ids) == ids
        assert len(masked.ids) == len(ids) + 2 * len(masked.spans) + (1 if masked.spans else 0)
        assert len(masked.loss_mask) == len(masked.ids)
    # Every document here has maskable tokens, so at least one span always; Poisson(1) clamps give 1 most often.
    assert span_counts[0] == 0 and span_counts[1] > span_counts[2] > span_counts[3] > 0


def test_exact_layout(vocab: Vocabulary) -> None:
    masker = CM3Masker(vocab)
    ids = vocab.encode_document(["red circle", ImageCodes.of(range(vocab.codes_per_image))])
    image_start = ids.index(vocab.break_id) + 1
    spans = [(1, 2), (image_start + 3, image_start + 6)]
    masked = masker.apply(ids, spans)
    m0, m1 = vocab.mask_sentinel_ids[0], vocab.mask_sentinel_ids[1]
    expected = (
        [vocab.bos_id, m0, *ids[2 : image_start + 3], m1, *ids[image_start + 6 : -1], vocab.infill_id]
        + [m0, ids[1], m1, *ids[image_start + 3 : image_start + 6], vocab.eos_id]
    )
    assert masked.ids == expected
    # Targets: body sentinels, <infill> and the announced <mask:0> are not; the span-end <mask:1> and <eos> are.
    names = [vocab.token_name(t) for t, on in zip(masked.ids, masked.loss_mask, strict=True) if not on]
    assert names == ["<bos>", "<mask:0>", "<mask:1>", "<infill>", "<mask:0>"]


def test_spans_never_cross_break_or_document_ends(vocab: Vocabulary) -> None:
    masker = CM3Masker(vocab, CM3Config(masked_fraction=1.0, mean_spans=3.0, max_span_fraction=1.0))
    rng = random.Random(2)
    covered_image = covered_text = 0
    for _ in range(1000):
        ids = random_document(vocab, rng)
        runs = masker.maskable_runs(ids)
        for start, end in masker.sample_spans(ids, rng):
            assert not {vocab.break_id, vocab.bos_id, vocab.eos_id} & set(ids[start:end])
            # Inside one run: an image span never leaves its image block.
            assert any(run_start <= start and end <= run_end for run_start, run_end in runs)
            kinds = {vocab.kind_of(t) for t in ids[start:end]}
            assert kinds != {"special"}
            if "image" in kinds:
                assert kinds == {"image"}
                covered_image += 1
            else:
                covered_text += 1
    # Spans do cover image codes (that is how infilling is learned) and text.
    assert covered_image > 100 and covered_text > 100


def test_body_sentinels_never_carry_loss_and_span_tokens_always_do(vocab: Vocabulary) -> None:
    masker = CM3Masker(vocab, CM3Config.preset("always"))
    rng = random.Random(3)
    sentinels = set(vocab.mask_sentinel_ids)
    for _ in range(500):
        masked = masker(random_document(vocab, rng), rng)
        infill = masked.ids.index(vocab.infill_id)
        for i, (token, on) in enumerate(zip(masked.ids, masked.loss_mask, strict=True)):
            if i < infill and token in sentinels:
                assert not on  # where a span was cut is never a prediction target
            if i > infill + 1 and token not in sentinels:
                assert on  # every span token (and the final <eos>) is learned
        # Span ends are targets: one per span after the first, plus the <eos>.
        assert sum(masked.loss_mask[infill + 1 :]) == len(masked.ids) - infill - 2


def test_masked_fraction_and_unmasked_documents(vocab: Vocabulary) -> None:
    rng = random.Random(4)
    half = CM3Masker(vocab, CM3Config(masked_fraction=0.3))
    documents = [random_document(vocab, rng) for _ in range(2000)]
    masked = sum(bool(half(ids, rng).spans) for ids in documents)
    assert abs(masked / len(documents) - 0.3) < 0.04
    plain = CM3Masker(vocab, CM3Config.preset("none"))(documents[0], rng)
    assert plain.ids == documents[0] and plain.spans == ()
    assert plain.loss_mask == [False] + [True] * (len(documents[0]) - 1)


def test_invalid_spans_are_rejected(vocab: Vocabulary) -> None:
    masker = CM3Masker(vocab)
    ids = vocab.encode_document(["red circle", ImageCodes.of(range(vocab.codes_per_image))])
    crossing_break = (ids.index(vocab.break_id) - 1, ids.index(vocab.break_id) + 2)
    for spans in ([crossing_break], [(1, 3), (3, 4)], [(0, 2)]):
        with pytest.raises(ValueError):
            masker.apply(ids, spans)
