"""Retriever evaluation: cross-modal recall@k on held-out scenes, and the Fréchet-distance floor.

A hit is a retrieved item whose scene matches the query's exactly (equal scene keys), not merely the paired
item: the test split holds the same one-object scene many times, and any copy of it is a correct answer.
Queries are detailed captions (a random paraphrase each), which name every attribute, so the scene they
describe is unique.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cm3leon.data.language import CORPUS_TEXT_SCENE_FRACTION
from cm3leon.data.world import Scene, Split, World, WorldConfig
from cm3leon.evaluation.frechet import frechet_distance, image_features
from cm3leon.retrieval.metrics import RECALL_KS, recall_at_k
from cm3leon.retrieval.pairs import draw_pairs, stack_images
from cm3leon.retrieval.retriever import Retriever

# Suffix of the seed that draws the second, independent real set for the Fréchet floor.
FLOOR_SEED_SUFFIX = "fd-floor"


def scene_kind(scene: Scene) -> str:
    """The breakdown recall is reported by: text-rendering scenes, or shapes scenes by object count."""
    return "text" if scene.is_text else f"{len(scene.objects)}_objects"


def evaluate_retrieval(
    retriever: Retriever,
    n: int = 1000,
    seed: int = 0,
    split: Split | str = Split.TEST,
    world_config: WorldConfig | None = None,
    text_scene_fraction: float = CORPUS_TEXT_SCENE_FRACTION,
    with_frechet_floor: bool = True,
) -> dict[str, Any]:
    """Recall@1/5 text->image and image->text over `n` pairs of `split`, per scene kind too, and the Fréchet
    distance between two independent real image sets of size `n` (the floor any generator is measured against)."""

    world = World(world_config or WorldConfig.preset("shapes"))
    pairs = draw_pairs(world, seed, split, n, short_caption_fraction=0.0, text_scene_fraction=text_scene_fraction)
    keys = [pair.scene.key() for pair in pairs]
    images = stack_images(pairs)
    text_embeddings = retriever.embed_texts([pair.text for pair in pairs])
    image_embeddings = retriever.embed_images(images)
    similarity = text_embeddings @ image_embeddings.T  # (texts, images)

    text_to_image = recall_at_k(similarity, keys, keys)
    image_to_text = recall_at_k(similarity.T, keys, keys)
    metrics: dict[str, Any] = {"split": Split(split).value, "n": n, "unique_scenes": len(set(keys))}
    for k in RECALL_KS:
        metrics[f"text_to_image_recall_at_{k}"] = float(text_to_image[k].mean())
        metrics[f"image_to_text_recall_at_{k}"] = float(image_to_text[k].mean())

    kinds = np.array([scene_kind(pair.scene) for pair in pairs])
    metrics["text_to_image_recall_at_1_by_kind"] = {
        kind: float(text_to_image[1][kinds == kind].mean()) for kind in sorted(set(kinds.tolist()))
    }
    metrics["matched_pair_cosine"] = float(np.mean(np.sum(text_embeddings * image_embeddings, axis=1)))

    if with_frechet_floor:
        floor_pairs = draw_pairs(
            world, f"{seed}:{FLOOR_SEED_SUFFIX}", split, n, text_scene_fraction=text_scene_fraction
        )
        metrics["fd_real_floor"] = frechet_distance(
            image_features(retriever, images), image_features(retriever, stack_images(floor_pairs))
        )
    return metrics
