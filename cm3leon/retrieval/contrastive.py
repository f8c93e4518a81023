"""The symmetric contrastive (InfoNCE) loss with scene-aware targets, and the keys that decide what matches.

In the shapes world a batch often holds the *same scene* twice (a one-object scene is one of about 1,700 train
scenes), and a short caption ("a red circle") fits every scene with those objects wherever they are. Plain
CLIP targets (the diagonal) would push such true pairs apart as negatives. Here every (text, image) pair whose
keys match is a positive, and each row's target is uniform over its positives (soft targets): the duplicates
are neither negatives nor ignored.

Match keys: a detailed caption names everything, so it matches exactly the images of its scene (`scene|KEY`);
a short caption names colours and shapes only, so it matches every image with the same multiset of
(colour, shape) objects (`short|...`; for a text scene, the word and its colour).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
import torch.nn.functional as F

from cm3leon.data.world import Scene

SCENE_PREFIX = "scene|"
SHORT_PREFIX = "short|"


def scene_match_key(scene: Scene) -> str:
    """What a detailed caption determines: the whole scene."""
    return SCENE_PREFIX + scene.key()


def short_match_key(scene: Scene) -> str:
    """What a short caption determines: the objects' colours and shapes (order-free), or the word and colour."""
    if scene.is_text:
        return f"{SHORT_PREFIX}word:{scene.word}:{scene.word_colour}"
    return SHORT_PREFIX + ",".join(sorted(f"{o.colour}:{o.shape}" for o in scene.objects))


def image_match_keys(scene: Scene) -> tuple[str, str]:
    """Every text key an image of `scene` satisfies."""
    return scene_match_key(scene), short_match_key(scene)


def positive_pairs(text_keys: Sequence[str], image_keys: Sequence[Collection[str]]) -> torch.Tensor:
    """(T, I) bool: True where text t describes image i."""
    ids: dict[str, int] = {}
    text_ids = torch.tensor([ids.setdefault(key, len(ids)) for key in text_keys])
    width = max((len(keys) for keys in image_keys), default=0)
    # Pad each image's key list with -1, which no text id equals.
    image_ids = torch.full((len(image_keys), width), -1, dtype=torch.long)
    for row, keys in enumerate(image_keys):
        for column, key in enumerate(keys):
            image_ids[row, column] = ids.setdefault(key, len(ids))
    return (text_ids[:, None, None] == image_ids[None, :, :]).any(-1)


def soft_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row against the uniform distribution over its positives (mean over rows)."""
    targets = positives.float()
    targets = targets / targets.sum(-1, keepdim=True).clamp(min=1.0)
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def contrastive_loss(
    text_embeddings: torch.Tensor, image_embeddings: torch.Tensor, scale: torch.Tensor, positives: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE: mean of the text->image and image->text losses.

    text_embeddings (T, D) and image_embeddings (I, D) are L2-normalised; positives (T, I) bool must give
    every row and column at least one positive (a pair's own text and image always match).
    """
    if not (bool(positives.any(1).all()) and bool(positives.any(0).all())):
        raise ValueError("every text and every image needs at least one positive in the batch")
    logits = scale * text_embeddings @ image_embeddings.T  # (T, I)
    text_to_image = soft_cross_entropy(logits, positives)
    image_to_text = soft_cross_entropy(logits.T, positives.T)
    return (text_to_image + image_to_text) / 2
