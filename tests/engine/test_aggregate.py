"""FedAvg by hand: weighted and unweighted means of exactly the tensors sent."""

from __future__ import annotations

import numpy as np
import pytest

from engine.aggregate import fedavg, fedavg_weights


def test_weights_by_hand() -> None:
    np.testing.assert_allclose(fedavg_weights([10, 30], weighted=True), [0.25, 0.75])
    np.testing.assert_allclose(fedavg_weights([10, 30], weighted=False), [0.5, 0.5])
    with pytest.raises(ValueError):
        fedavg_weights([], weighted=True)


def test_fedavg_by_hand() -> None:
    a = {"w": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([[4.0]], dtype=np.float32)}
    b = {"b": np.array([[0.0]], dtype=np.float32), "w": np.array([3.0, 6.0], dtype=np.float32)}
    out = fedavg([a, b], np.array([0.25, 0.75]))
    np.testing.assert_array_equal(out["w"], [2.5, 5.0])  # 0.25*1 + 0.75*3, 0.25*2 + 0.75*6
    np.testing.assert_array_equal(out["b"], [[1.0]])
    assert out["w"].dtype == np.float32


def test_fedavg_rejects_mismatched_updates() -> None:
    a = {"w": np.zeros(2, dtype=np.float32)}
    with pytest.raises(ValueError, match="different tensors"):
        fedavg([a, {"v": np.zeros(2, dtype=np.float32)}], np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="shape"):
        fedavg([a, {"w": np.zeros(3, dtype=np.float32)}], np.array([0.5, 0.5]))
