"""The retriever as reranker: the shipped shapes retriever prefers the candidate that shows the caption."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from cm3leon.data.language import detailed_caption
from cm3leon.data.render import render
from cm3leon.data.world import Split, World, WorldConfig
from cm3leon.decoding.params import GenerationRequest
from cm3leon.retrieval.rerank import RetrieverScorer, prompt_caption
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.text import TextTokenizer
from cm3leon.tokenizers.vocab import ImageCodes, Locations, Vocabulary, VocabularyConfig

SHAPES = Path(__file__).resolve().parents[1] / "models" / "shapes"


def never_called(request: GenerationRequest, prompt_ids: list[int], candidates: list[list[int]]) -> list[float]:
    raise AssertionError("image candidates must be scored by the retriever")


@pytest.fixture(scope="module")
def shipped() -> tuple[Retriever, ImageTokenizer, Vocabulary]:
    image_tokenizer = ImageTokenizer.from_pretrained(SHAPES / "vq")
    vq = image_tokenizer.config
    config = VocabularyConfig(codebook_size=vq.codebook_size, image_grid=vq.grid)
    vocab = Vocabulary(TextTokenizer.load(SHAPES), config)
    return Retriever.from_pretrained(SHAPES / "retriever"), image_tokenizer, vocab


def test_the_candidate_that_shows_the_caption_wins(shipped: tuple[Retriever, ImageTokenizer, Vocabulary]) -> None:
    retriever, image_tokenizer, vocab = shipped
    world = World(WorldConfig.preset("shapes"))
    rng = random.Random(3)
    wins = 0
    for _ in range(10):
        target, other = world.sample(rng, Split.TEST), world.sample(rng, Split.TEST)
        caption = detailed_caption(target, world.config, rng)
        images = [render(scene, world.config).image for scene in (other, target)]
        codes = image_tokenizer.encode(np.stack(images)).view(2, -1).tolist()
        candidates = [vocab.encode_image(c) for c in codes]
        # Retrieved documents before the query must not change which caption is scored.
        prefix = vocab.encode_document(["a small red circle at the top left on white"])
        prompt = prefix + vocab.encode_document([caption], eos=False) + [vocab.break_id]
        assert prompt_caption(vocab, prompt) == caption
        scorer = RetrieverScorer(retriever, vocab, image_tokenizer, fallback=never_called)
        scores = scorer(GenerationRequest(prompt_ids=prompt, target="image"), prompt, candidates)
        wins += scores[1] > scores[0]
    assert wins >= 9


def test_the_caption_is_the_text_after_the_query_documents_last_image(
    shipped: tuple[Retriever, ImageTokenizer, Vocabulary],
) -> None:
    _, _, vocab = shipped
    image = ImageCodes.of([1] * vocab.codes_per_image)
    structure = vocab.encode_document(["Make an image from this map", image, "a red circle"], eos=False)
    assert prompt_caption(vocab, structure + [vocab.break_id]) == "a red circle"
    # A grounded prompt: its words around the boxes (location tokens are no words).
    grounded = vocab.encode_document(
        ["a large red circle", Locations((0, 0, 4, 4)), " and a blue star", Locations((4, 4, 8, 8))], eos=False
    )
    assert prompt_caption(vocab, grounded + [vocab.break_id]) == "a large red circle and a blue star"
    assert prompt_caption(vocab, vocab.encode_document([image], eos=False)) is None


def test_text_targets_fall_back(shipped: tuple[Retriever, ImageTokenizer, Vocabulary]) -> None:
    retriever, image_tokenizer, vocab = shipped
    scorer = RetrieverScorer(retriever, vocab, image_tokenizer, fallback=lambda r, p, c: [1.0, 2.0])
    prompt = vocab.encode_document(["Question: what colour is the circle?"], eos=False)
    assert scorer(GenerationRequest(prompt_ids=prompt, target="text"), prompt, [[5], [6]]) == [1.0, 2.0]
