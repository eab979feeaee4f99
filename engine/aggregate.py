"""FedAvg over exactly the trainable tensors the clients sent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def fedavg_weights(num_samples: Sequence[int], weighted: bool) -> np.ndarray:
    """Client weights summing to 1: by sample count (FedAvg) or uniform (FedPETuning's code)."""
    counts = np.asarray(num_samples, dtype=np.float64)
    if len(counts) == 0:
        raise ValueError("no client updates to aggregate")
    if weighted:
        if counts.sum() <= 0:
            raise ValueError("weighted FedAvg needs a positive total sample count")
        return counts / counts.sum()
    return np.full(len(counts), 1.0 / len(counts))


def fedavg(
    states: Sequence[Mapping[str, np.ndarray]], weights: np.ndarray
) -> dict[str, np.ndarray]:
    """sum_i w_i * state_i per tensor, accumulated in float64 in the given (fixed) order.

    Every state must hold the same keys and shapes; the result keeps each tensor's dtype.
    """
    keys = sorted(states[0])
    for i, s in enumerate(states[1:], start=1):
        if sorted(s) != keys:
            missing = set(keys) ^ set(s)
            raise ValueError(f"client update {i} has different tensors: {sorted(missing)[:3]}")
    out: dict[str, np.ndarray] = {}
    for k in keys:
        acc = np.zeros(states[0][k].shape, dtype=np.float64)
        for w, s in zip(weights, states, strict=True):
            if s[k].shape != acc.shape:
                raise ValueError(f"tensor {k!r}: shape {s[k].shape} != {acc.shape}")
            acc += w * s[k].astype(np.float64)
        out[k] = acc.astype(states[0][k].dtype)
    return out
