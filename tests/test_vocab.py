"""Text tokenizer round trips and the unified vocabulary's layout and document round trips."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cm3leon.tokenizers.text import TextTokenizer, TextTokenizerConfig
from cm3leon.tokenizers.vocab import ImageCodes, Locations, Vocabulary, VocabularyConfig

TRAINING_TEXT = [
    "a large red circle at the top left on a white background",
    "a small blue star in the center and a large green square at the bottom right on a gray background",
    "how many objects are there?",
    "there are 2 circles and 1 square, so the answer is 1",
] * 20


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(TRAINING_TEXT, TextTokenizerConfig.preset("tiny"))


@pytest.fixture(scope="module")
def vocab(tokenizer: TextTokenizer) -> Vocabulary:
    config = VocabularyConfig(codebook_size=64, image_grid=4, num_mask_sentinels=4, location_bins=8)
    return Vocabulary(tokenizer, config)


@pytest.mark.parametrize(
    "text",
    ["", "a red circle", "héllo wörld", "世界 🙂 emoji", "tabs\tand\nnewlines  double  spaces", "\x00\x7f\u200b"],
)
def test_text_round_trip_any_utf8(tokenizer: TextTokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_text_round_trip_random_unicode(tokenizer: TextTokenizer) -> None:
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2FFF)])) for _ in range(20))
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_bpe_learns_the_world_words(tokenizer: TextTokenizer) -> None:
    # Merges must have been learned: a frequent phrase costs far fewer tokens than its bytes.
    assert len(tokenizer.encode("a large red circle")) <= 6


def test_layout_ranges_are_disjoint_and_cover_the_vocabulary(vocab: Vocabulary) -> None:
    ranges = [range(0, len(vocab.special_tokens)), vocab.text_ids, vocab.image_ids, vocab.location_ids]
    assert [r.start for r in ranges[1:]] == [r.stop for r in ranges[:-1]]
    assert vocab.location_ids.stop == vocab.size
    assert len(vocab.image_ids) == 64 and len(vocab.location_ids) == 8
    assert vocab.codes_per_image == 16
    specials = {vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.break_id, vocab.mask_id, vocab.infill_id}
    assert len(specials) == 6 and not specials & set(vocab.mask_sentinel_ids)


def test_mixed_document_round_trip(vocab: Vocabulary) -> None:
    rng = random.Random(1)
    image = ImageCodes.of(rng.randrange(64) for _ in range(16))
    other = ImageCodes.of(rng.randrange(64) for _ in range(16))
    document = ["Edit first image following the instruction", image, "make the red circle blue", other]
    ids = vocab.encode_document(document)
    assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id
    assert ids.count(vocab.break_id) == 3
    assert vocab.decode_document(ids) == document


def test_locations_stay_in_the_text_modality(vocab: Vocabulary) -> None:
    document = [Locations((0, 1, 6, 7)), "red circle", ImageCodes.of([3] * 16)]
    ids = vocab.encode_document(document, bos=False, eos=False)
    # No <break> between locations and text; one before the image.
    assert ids.count(vocab.break_id) == 1
    assert vocab.decode_document(ids) == document


def test_image_blocks_must_have_exactly_the_codes_per_image(vocab: Vocabulary) -> None:
    with pytest.raises(ValueError, match="exactly 16"):
        vocab.encode_image(range(15))
    with pytest.raises(ValueError, match="codes must lie"):
        vocab.encode_image([64] * 16)


def test_vocabulary_save_and_load(vocab: Vocabulary, tmp_path: Path) -> None:
    vocab.save(tmp_path)
    loaded = Vocabulary.load(tmp_path)
    document = ["a small blue star", ImageCodes.of(range(16))]
    assert loaded.size == vocab.size
    assert loaded.encode_document(document) == vocab.encode_document(document)
