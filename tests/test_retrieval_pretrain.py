"""Retrieval-augmented pretraining: neighbours by the paper's rules, the sequence layout, and the CLI path."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pretrain_helpers import tiny_corpus, tiny_data_config, tiny_image_tokenizer, tiny_vocabulary
from typer.testing import CliRunner

from cm3leon.cli import app
from cm3leon.objectives.cm3 import CM3Config
from cm3leon.retrieval.config import RetrieverConfig
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.vocab import Vocabulary
from cm3leon.training.image_corpus import ImageCodeCorpus, render_images
from cm3leon.training.pretrain_data import PretrainBatches
from cm3leon.training.retrieval_data import (
    NO_NEIGHBOUR,
    CorpusRetrieval,
    TrainingRetrievalConfig,
    compute_neighbours,
    memory_captions,
)


@pytest.fixture(scope="module")
def image_tokenizer() -> ImageTokenizer:
    return tiny_image_tokenizer()


@pytest.fixture(scope="module")
def vocab(image_tokenizer: ImageTokenizer) -> Vocabulary:
    return tiny_vocabulary(image_tokenizer)


@pytest.fixture(scope="module")
def corpus(image_tokenizer: ImageTokenizer, tmp_path_factory: pytest.TempPathFactory) -> ImageCodeCorpus:
    return tiny_corpus(image_tokenizer, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def retriever(vocab: Vocabulary) -> Retriever:
    # The tiny pretraining world draws 32-pixel images; an untrained retriever still embeds deterministically.
    config = replace(RetrieverConfig.preset("tiny"), image_size=32)
    return Retriever.build(config, vocab.text_tokenizer)


def test_neighbours_follow_the_papers_rules(retriever: Retriever, corpus: ImageCodeCorpus) -> None:
    world = tiny_data_config().world()
    config = TrainingRetrievalConfig(k=2, candidates=8, diversity_threshold=0.97)
    neighbours = compute_neighbours(retriever, corpus, world, config, progress=False)
    assert neighbours.shape == (len(corpus), 2)
    images = render_images(corpus.scenes, world, workers=1)
    memory = retriever.embed_texts(memory_captions(corpus.scenes, world, config.seed)) + retriever.embed_images(images)
    memory /= np.linalg.norm(memory, axis=1, keepdims=True)
    found = 0
    for query, row in enumerate(neighbours):
        chosen = [int(j) for j in row if j != NO_NEIGHBOUR]
        found += len(chosen)
        # Never the query's own scene (nor an exact copy of it), never twice the same document.
        assert all(corpus.scenes[j].key() != corpus.scenes[query].key() for j in chosen)
        assert len(set(chosen)) == len(chosen)
        # Diversity: the documents taken are not near-duplicates of each other.
        if len(chosen) == 2:
            assert float(memory[chosen[0]] @ memory[chosen[1]]) <= config.diversity_threshold + 1e-5
    assert found >= len(corpus)  # most queries get their documents


def test_hook_puts_retrieved_documents_before_the_query_most_relevant_last(
    vocab: Vocabulary, corpus: ImageCodeCorpus
) -> None:
    neighbours = np.array([[(i + 1) % len(corpus), (i + 2) % len(corpus)] for i in range(len(corpus))])
    world = tiny_data_config().world()
    hook = CorpusRetrieval(corpus, neighbours, k=2, world=world, detailed_caption_fraction=1.0)
    config = tiny_data_config(retrieved=2, cm3=CM3Config.preset("none"))
    source = PretrainBatches(config, vocab, corpus, batch_size=2, retrieval_hook=hook)
    query = source.sample_document(random.Random(0))
    ids, _ = source.encode_unit(query, random.Random(1))
    bos_positions = [i for i, token in enumerate(ids) if token == vocab.bos_id]
    assert len(bos_positions) == 3 and ids[-1] == vocab.eos_id
    documents = [ids[a:b] for a, b in zip(bos_positions, [*bos_positions[1:], len(ids)], strict=True)]
    assert documents[2] == query.token_ids(vocab)  # the query document comes last, unchanged
    for document, neighbour in zip(documents[:2], reversed(neighbours[query.corpus_index]), strict=True):
        # `<bos> caption <break> IMAGE <eos>`: text first, then the neighbour's own codes.
        image = vocab.encode_image(corpus.image_codes(int(neighbour)).codes)
        assert document[-len(image) - 1 : -1] == image and vocab.kind_of(document[1]) == "text"


def test_cli_pretrains_with_retrieved_documents(
    vocab: Vocabulary, image_tokenizer: ImageTokenizer, retriever: Retriever, tmp_path: Path
) -> None:
    vq_dir = image_tokenizer.save_pretrained(tmp_path / "vq")
    vocab.save(tmp_path / "shared")
    retriever.save_pretrained(tmp_path / "retriever")
    out = tmp_path / "run"
    command = ["train", "pretrain", "--preset", "tiny", "--out", str(out), "--vq", str(vq_dir), "--steps", "2"]
    command += ["--tokenizer-dir", str(tmp_path / "shared"), "--device", "cpu", "--no-bf16"]
    command += ["--retrieved", "2", "--retriever", str(tmp_path / "retriever"), "--data-workers", "1"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert len(list((out / "cache").glob("neighbours-*.npy"))) == 1
    record = json.loads((out / "final" / "training.json").read_text())
    assert record["data_config"]["retrieved"] == 2 and record["summary"]["steps"] == 2


def test_cli_sft_retrieves_for_text_to_image_examples(retriever: Retriever, tmp_path: Path) -> None:
    from sft_helpers import tiny_init_checkpoint

    init = tiny_init_checkpoint(tmp_path)
    retriever.save_pretrained(tmp_path / "retriever")
    out = tmp_path / "sft"
    command = ["train", "sft", "--init", str(init), "--out", str(out), "--steps", "2", "--device", "cpu"]
    command += ["--no-bf16", "--retrieved", "2", "--retriever", str(tmp_path / "retriever"), "--data-workers", "1"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    neighbours = list((out / "cache").glob("neighbours-sft-scenes-*.npy"))
    assert len(neighbours) == 1 and np.load(neighbours[0]).shape[1] == 2
    assert json.loads((out / "final" / "training.json").read_text())["summary"]["steps"] == 2


def test_inference_prompt_uses_the_training_layout(vocab: Vocabulary, corpus: ImageCodeCorpus) -> None:
    """Serving prepends retrieved documents exactly as the pretraining hook does: most relevant last."""
    from cm3leon.inference.retrieval import with_context
    from cm3leon.retrieval.memory import RetrievedDocument

    def stored(index: int, score: float) -> RetrievedDocument:
        codes = tuple(corpus.image_codes(index).codes)
        return RetrievedDocument(f"d{index}", score, f"caption {index}", True, True, "train", codes, None)

    best, second = stored(0, 0.9), stored(1, 0.8)
    query = vocab.encode_document(["a small red circle"], eos=False) + [vocab.break_id]
    ids, used = with_context(vocab, [best, second], query, budget=10_000)
    expected = [
        *vocab.encode_document(["caption 1", corpus.image_codes(1)]),
        *vocab.encode_document(["caption 0", corpus.image_codes(0)]),
        *query,
    ]
    assert ids == expected and used == [best, second]
    # A tight budget keeps the best document, still directly before the query.
    one = len(vocab.encode_document(["caption 0", corpus.image_codes(0)])) + len(query)
    ids, used = with_context(vocab, [best, second], query, budget=one)
    assert used == [best] and ids == expected[len(expected) - one :]
