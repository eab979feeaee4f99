"""Dataset pruning: per-sample difficulty scores (EL2N, loss, random) and which samples a client keeps."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SCORES = ("el2n", "loss", "random")


def el2n(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EL2N (Paul et al. 2021): ||softmax(logits) - onehot(label)||_2 per sample; [b, k], [b] -> [b]."""
    probs = F.softmax(logits.float(), dim=-1)
    onehot = F.one_hot(labels, probs.shape[-1]).to(probs.dtype)
    return torch.linalg.vector_norm(probs - onehot, dim=-1)


def sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample; [b, k], [b] -> [b]."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def score_batch(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    if kind == "el2n":
        return el2n(logits, labels).numpy().astype(np.float64)
    if kind == "loss":
        return sample_loss(logits, labels).numpy().astype(np.float64)
    raise ValueError(f"unknown pruning score {kind!r}; use one of {', '.join(SCORES)}")


def kept_count(n: int, keep_ratio: float) -> int:
    """ceil(keep_ratio * n), at least one sample (a client with data always trains)."""
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return max(1, min(n, math.ceil(keep_ratio * n - 1e-9)))


def keep_hardest(rows: np.ndarray, scores: np.ndarray, keep_ratio: float) -> np.ndarray:
    """The rows with the highest scores (hardest first), ties broken by row order; sorted ascending."""
    if len(rows) != len(scores):
        raise ValueError(f"{len(rows)} rows but {len(scores)} scores")
    k = kept_count(len(rows), keep_ratio)
    order = np.lexsort((np.arange(len(rows)), -np.asarray(scores, dtype=np.float64)))
    return np.sort(rows[order[:k]])


def keep_hardest_per_class(
    rows: np.ndarray, scores: np.ndarray, labels: np.ndarray, keep_ratio: float
) -> np.ndarray:
    """`keep_hardest` within each label, so pruning keeps the client's label mix.

    Hardest-first over all samples follows the model's bias: early in training a classifier
    leaning to one class scores every sample of the other class as hard, keeps only those, and
    the next round leans the other way (measured on amazon_reviews: accuracy oscillating below
    the majority class). Keeping the same fraction of every label removes that feedback loop.
    """
    rows, labels = np.asarray(rows), np.asarray(labels)
    kept = [
        keep_hardest(rows[labels == y], np.asarray(scores)[labels == y], keep_ratio)
        for y in np.unique(labels)
    ]
    return np.sort(np.concatenate(kept))


def keep_random(rows: np.ndarray, keep_ratio: float, rng: np.random.Generator) -> np.ndarray:
    k = kept_count(len(rows), keep_ratio)
    return np.sort(rng.choice(rows, size=k, replace=False))
