"""The CLIP-style retriever on tiny real components: shapes and normalisation, document averaging, the
scene-aware contrastive loss, learning, resumable training, recall@k, and the Fréchet distance."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg
from typer.testing import CliRunner

from cm3leon.cli import app
from cm3leon.data.render import render
from cm3leon.data.world import Scene, SceneObject, Split, World, WorldConfig, split_of
from cm3leon.evaluation.frechet import frechet_distance
from cm3leon.evaluation.retrieval_eval import evaluate_retrieval
from cm3leon.retrieval.config import RetrieverConfig, RetrieverTrainingConfig
from cm3leon.retrieval.contrastive import (
    contrastive_loss,
    image_match_keys,
    positive_pairs,
    scene_match_key,
    short_match_key,
    soft_cross_entropy,
)
from cm3leon.retrieval.documents import RetrievalDocument, world_documents
from cm3leon.retrieval.metrics import recall_at_k
from cm3leon.retrieval.pairs import draw_pairs, near_miss
from cm3leon.retrieval.retriever import Retriever, drop_tokens
from cm3leon.tokenizers.text import TextTokenizer, TextTokenizerConfig
from cm3leon.tokenizers.world_text import train_world_tokenizer
from cm3leon.training.checkpoint import MetricsLogger
from cm3leon.training.retriever import METRICS_FILE, batch_loss, build_optimizer, learning_rate, train_retriever

WORLD = World(WorldConfig.preset("tiny"))



@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return train_world_tokenizer(WORLD.config, TextTokenizerConfig.preset("tiny"), n_scenes=60)


@pytest.fixture()
def retriever(tokenizer: TextTokenizer) -> Retriever:
    torch.manual_seed(0)
    return Retriever.build(RetrieverConfig.preset("tiny"), tokenizer)


def scene(*objects: tuple[int, str, str, str], background: str = "white") -> Scene:
    return Scene(background, tuple(SceneObject(cell, shape, colour, size) for cell, shape, colour, size in objects))


# --- embeddings ---------------------------------------------------------------------------------------------


def test_embeddings_have_the_configured_shape_and_unit_norm(retriever: Retriever) -> None:
    pairs = draw_pairs(WORLD, 0, Split.TRAIN, 5)
    texts = retriever.embed_texts([p.text for p in pairs])
    images = retriever.embed_images(np.stack([p.image for p in pairs]))
    dim = RetrieverConfig.preset("tiny").embed_dim
    assert texts.shape == images.shape == (5, dim)
    assert texts.dtype == images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    assert retriever.embed_texts([]).shape == (0, dim)
    assert retriever.similarity([p.text for p in pairs[:2]], np.stack([p.image for p in pairs])).shape == (2, 5)


def test_images_of_the_wrong_shape_or_dtype_are_rejected(retriever: Retriever) -> None:
    with pytest.raises(ValueError, match="uint8"):
        retriever.embed_images(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        retriever.embed_images(np.zeros((1, 64, 64, 3), dtype=np.float32))


def test_document_embedding_is_the_normalised_mean_of_its_parts(retriever: Retriever) -> None:
    docs = list(world_documents(WORLD, 3, seed=1))
    text = retriever.embed_texts([d.text or "" for d in docs])
    image = retriever.embed_images(np.stack([d.image for d in docs]))  # type: ignore[misc]
    mean = text + image
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(retriever.embed_documents(docs), expected, atol=1e-5)
    # Single-modality documents use their one part.
    text_only = RetrievalDocument("t", text=docs[0].text)
    image_only = RetrievalDocument("i", image=docs[0].image)
    mixed = retriever.embed_documents([text_only, image_only, docs[0]])
    np.testing.assert_allclose(mixed[0], text[0], atol=1e-5)
    np.testing.assert_allclose(mixed[1], image[0], atol=1e-5)
    np.testing.assert_allclose(mixed[2], expected[0], atol=1e-5)
    with pytest.raises(ValueError, match="neither"):
        RetrievalDocument("empty")


def test_save_and_load_give_the_same_embeddings(retriever: Retriever, tmp_path: Path) -> None:
    docs = list(world_documents(WORLD, 4, seed=2))
    retriever.save_pretrained(tmp_path)
    loaded = Retriever.from_pretrained(tmp_path)
    assert loaded.config == retriever.config
    np.testing.assert_allclose(loaded.embed_documents(docs), retriever.embed_documents(docs), atol=1e-6)


def test_query_dropout_drops_about_the_fraction_and_keeps_a_token() -> None:
    rng = random.Random(0)
    ids = list(range(1000))
    kept = drop_tokens(ids, 0.2, rng)
    assert 750 < len(kept) < 850 and kept == sorted(kept)
    assert len(drop_tokens([7], 0.99, random.Random(1))) == 1
    assert drop_tokens([], 0.5, rng) == []


def test_query_dropout_changes_the_text_embedding(retriever: Retriever) -> None:
    text = ["a large red circle at the top left and a small blue star at the center on a white background"]
    plain = retriever.embed_texts(text)
    dropped = retriever.embed_texts(text, query_dropout=0.5, rng=random.Random(3))
    assert not np.allclose(plain, dropped)


# --- the contrastive loss and its targets --------------------------------------------------------------------


def test_duplicate_scenes_and_fitting_short_captions_are_positives() -> None:
    red_circle = scene((0, "circle", "red", "large"))
    moved = scene((4, "circle", "red", "small"), background="black")
    blue_star = scene((0, "star", "blue", "large"))
    text_keys = [
        scene_match_key(red_circle),
        scene_match_key(red_circle),
        short_match_key(moved),
        scene_match_key(blue_star),
    ]
    image_keys = [image_match_keys(red_circle), image_match_keys(red_circle), image_match_keys(moved),
                  image_match_keys(blue_star)]  # fmt: skip
    positives = positive_pairs(text_keys, image_keys)
    expected = torch.tensor(
        [
            [True, True, False, False],  # a detailed caption fits every copy of its scene
            [True, True, False, False],
            [True, True, True, False],  # "a red circle" fits every scene with one red circle, wherever it is
            [False, False, False, True],
        ]
    )
    assert torch.equal(positives, expected)


def test_distinct_keys_give_the_standard_clip_loss() -> None:
    torch.manual_seed(0)
    text, image = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * text @ image.T
    labels = torch.arange(6)
    clip = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(contrastive_loss(text, image, scale, torch.eye(6, dtype=torch.bool)), clip)


def test_a_second_positive_is_not_pushed_down_as_a_negative() -> None:
    # A caption that fits two images equally well (a duplicate scene, or a short caption): with scene-aware
    # targets that is the optimum, with diagonal targets the second image's logit would be pushed down.
    def logit_gradient(positive_row: list[bool]) -> torch.Tensor:
        logits = torch.tensor([[20.0, 20.0, 0.0, 0.0]], requires_grad=True)
        soft_cross_entropy(logits, torch.tensor([positive_row])).backward()
        assert logits.grad is not None
        return logits.grad[0]

    assert logit_gradient([True, True, False, False]).abs().max() < 1e-6
    assert logit_gradient([True, False, False, False])[1] == pytest.approx(0.5, abs=1e-6)


def test_near_miss_differs_in_one_attribute_and_stays_in_the_split() -> None:
    rng = random.Random(0)
    for _ in range(50):
        anchor = WORLD.sample(rng, Split.TRAIN, text=rng.random() < 0.2)
        sibling = near_miss(anchor, WORLD, rng, Split.TRAIN)
        assert sibling is not None
        assert split_of(sibling, WORLD.config) is Split.TRAIN and sibling.key() != anchor.key()
        if anchor.is_text:
            assert sibling.is_text
            differences = (
                (anchor.background != sibling.background)
                + (anchor.word_colour != sibling.word_colour)
                + sum(a != b for a, b in zip(anchor.word or "", sibling.word or "", strict=True))
            )
            assert differences == 1
        else:
            # One attribute: the background, one object's field, or one object added / removed.
            changed = set(anchor.objects) ^ set(sibling.objects)
            assert (anchor.background != sibling.background) + (len(changed) > 0) == 1
            assert len(changed) in (0, 1, 2)


def test_pairs_are_reproducible_and_include_near_misses() -> None:
    first = draw_pairs(WORLD, 7, Split.TRAIN, 40, short_caption_fraction=0.3, near_miss_fraction=0.5)
    again = draw_pairs(WORLD, 7, Split.TRAIN, 40, short_caption_fraction=0.3, near_miss_fraction=0.5)
    assert [p.text for p in first] == [p.text for p in again] and len(first) == 40
    assert all(np.array_equal(p.image, render(p.scene, WORLD.config).image) for p in first[:5])
    assert any(p.text_key.startswith("short|") for p in first)


# --- training --------------------------------------------------------------------------------------------------


def test_training_steps_lower_the_loss_on_a_batch(retriever: Retriever) -> None:
    config = RetrieverTrainingConfig.preset("tiny", learning_rate=3e-3)
    pairs = draw_pairs(WORLD, 0, Split.TRAIN, 16, near_miss_fraction=0.0)
    optimizer = build_optimizer(retriever, config)
    retriever.model.train()
    with torch.no_grad():
        before = float(batch_loss(retriever, pairs, config))
    for _ in range(15):
        loss = batch_loss(retriever, pairs, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(batch_loss(retriever, pairs, config))
    assert after < before * 0.8, (before, after)


def test_learning_rate_warms_up_then_decays_to_its_floor() -> None:
    config = RetrieverTrainingConfig(learning_rate=1e-3, min_lr_ratio=0.1, warmup_fraction=0.1)
    assert learning_rate(config, 0.05) == pytest.approx(0.5e-3)
    assert learning_rate(config, 0.1) == pytest.approx(1e-3)
    assert learning_rate(config, 1.0) == pytest.approx(1e-4)
    assert learning_rate(config, 0.55) == pytest.approx((1e-3 + 1e-4) / 2)


def test_train_writes_a_loadable_retriever_and_resumes(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    config = RetrieverTrainingConfig.preset("tiny", eval_every=2)
    first = train_retriever(tmp_path, RetrieverConfig.preset("tiny"), config, tokenizer, steps=2, progress_bar=False)
    assert first.steps == 2 and first.val_text_to_image_recall_at_1 is not None
    resumed = train_retriever(tmp_path, RetrieverConfig.preset("tiny"), config, None, steps=4, progress_bar=False)
    assert resumed.steps == 4
    records = MetricsLogger.read(tmp_path / METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in records)
    loaded = Retriever.from_pretrained(tmp_path)
    assert loaded.embed_texts(["a red circle"]).shape == (1, loaded.embed_dim)


def test_cli_trains_a_tiny_retriever(tmp_path: Path) -> None:
    tokenizer_dir = tmp_path / "tok"
    train_world_tokenizer(WORLD.config, TextTokenizerConfig.preset("tiny"), n_scenes=30).save(tokenizer_dir)
    result = CliRunner().invoke(
        app,
        ["train", "retriever", "--preset", "tiny", "--out", str(tmp_path / "run"), "--steps", "2",
         "--tokenizer-dir", str(tokenizer_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert "2 steps" in result.output


# --- evaluation --------------------------------------------------------------------------------------------------


def test_recall_counts_any_item_of_the_same_scene_as_a_hit() -> None:
    similarity = np.array([[0.1, 0.9, 0.5], [0.8, 0.1, 0.7], [0.3, 0.2, 0.1]])
    keys = ["a", "b", "a"]
    recall = recall_at_k(similarity, keys, keys, ks=(1, 2))
    # Query 0 ("a") ranks item 1 ("b") first: a miss at 1, a hit at 2 (item 2 is also "a"); query 1 ("b")
    # has its only match ranked last.
    assert recall[1].tolist() == [False, False, True]
    assert recall[2].tolist() == [True, False, True]


def test_retrieval_evaluation_reports_every_metric(retriever: Retriever) -> None:
    metrics = evaluate_retrieval(retriever, n=24, seed=0)
    for direction in ("text_to_image", "image_to_text"):
        assert 0.0 <= metrics[f"{direction}_recall_at_1"] <= metrics[f"{direction}_recall_at_5"] <= 1.0
    assert metrics["fd_real_floor"] >= 0.0 and metrics["n"] == 24


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    shifts = [frechet_distance(features, features + shift) for shift in (0.1, 0.5, 1.0)]
    # A pure mean shift of s in every one of 8 dims adds exactly 8 s^2.
    assert shifts == pytest.approx([8 * 0.01, 8 * 0.25, 8 * 1.0], rel=1e-6)
    assert frechet_distance(features, features * 2.0) > 1.0


def test_frechet_distance_matches_the_textbook_formula_and_survives_singular_covariances() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.3
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    textbook = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(
        sigma_a + sigma_b - 2 * linalg.sqrtm(sigma_a @ sigma_b).real
    )
    assert frechet_distance(a, b) == pytest.approx(textbook, rel=1e-6)
    # Fewer samples than dimensions: singular covariances, still a finite, non-negative distance.
    few_a, few_b = rng.normal(size=(5, 32)), rng.normal(size=(5, 32))
    distance = frechet_distance(few_a, few_b)
    assert np.isfinite(distance) and distance > 0.0
