"""Fréchet distance between two feature sets: the shapes world's analogue of FID.

FID compares Gaussian fits of Inception features of real and generated images. There is no Inception network
for this world, so the feature extractor is the retriever's image tower (trained on exactly these images).
The distance between N(mu_a, S_a) and N(mu_b, S_b) is

    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

Numerics: the usual `sqrtm(S_a @ S_b)` takes the square root of a non-symmetric product, which for nearly
singular covariances (few samples per dimension) comes back complex or non-finite and has to be patched.
Instead, tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the *symmetric*
positive semi-definite matrix S_a^(1/2) S_b S_a^(1/2) (XY and YX share eigenvalues), in float64, with tiny
negative eigenvalues from rounding clipped to zero. Same value, no complex detours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import linalg

if TYPE_CHECKING:
    from cm3leon.retrieval.retriever import Retriever


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), covariance (D, D)) in float64 of features (N, D), N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below zero from rounding -> 0)."""
    eigenvalues, eigenvectors = linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """tr((S_a S_b)^(1/2)) for covariance matrices, via the symmetric S_a^(1/2) S_b S_a^(1/2)."""
    root_a = psd_sqrt(sigma_a)
    middle = root_a @ sigma_b @ root_a
    eigenvalues = linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance_from_statistics(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray
) -> float:
    mean_term = float(np.sum((mu_a - mu_b) ** 2))
    covariance_term = float(np.trace(sigma_a) + np.trace(sigma_b)) - 2.0 * trace_sqrt_product(sigma_a, sigma_b)
    # Rounding can leave a distance of a set to itself at -1e-15.
    return max(mean_term + covariance_term, 0.0)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (N_a, D) and (N_b, D)."""
    if np.shape(features_a)[-1] != np.shape(features_b)[-1]:
        raise ValueError(f"feature dims differ: {np.shape(features_a)} vs {np.shape(features_b)}")
    return frechet_distance_from_statistics(*feature_statistics(features_a), *feature_statistics(features_b))


def image_features(retriever: Retriever, images: np.ndarray) -> np.ndarray:
    """Features of uint8 images (N, H, W, 3) for the Fréchet distance: the retriever's L2-normalised image
    embeddings, in float64 (the space the retriever was trained to make captions and scenes separable in)."""
    return retriever.embed_images(images).astype(np.float64)
