"""Tests for the partitioners: IID, FedNLP label-Dirichlet, natural groups, histograms."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.partition import (
    dirichlet_counts,
    label_histograms,
    make_partition,
    partition_dirichlet,
    partition_iid,
    partition_natural,
)
from engine.errors import ConfigError


def _check_disjoint_sorted(parts):
    for p in parts:
        assert p.dtype == np.int64
        assert (np.diff(p) > 0).all()  # sorted ascending, no repeats
    allrows = np.concatenate(parts)
    assert len(np.unique(allrows)) == len(allrows)
    return allrows


def test_iid_sizes_disjoint_cover_and_seed():
    parts = partition_iid(103, 10, seed=0)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    allrows = _check_disjoint_sorted(parts)
    assert sorted(allrows.tolist()) == list(range(103))
    again = partition_iid(103, 10, seed=0)
    assert all((a == b).all() for a, b in zip(parts, again, strict=True))
    other = partition_iid(103, 10, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_validation():
    with pytest.raises(ConfigError) as err:
        partition_iid(5, 6, seed=0)
    assert err.value.key == "federation.num_clients"
    with pytest.raises(ConfigError):
        partition_iid(5, 0, seed=0)


def test_dirichlet_counts_by_hand():
    # size 10, p = (0.25, 0.35, 0.4): round(2.5) = 2 (half to even), round(3.5) = 4, last = 10 - 6 = 4.
    assert dirichlet_counts(np.array([0.25, 0.35, 0.4]), 10).tolist() == [2, 4, 4]
    # p = (0.06, 0.94) with size 50: round(3.0) = 3, remainder 47.
    assert dirichlet_counts(np.array([0.06, 0.94]), 50).tolist() == [3, 47]
    # Rounding up twice can overshoot: round(0.5*3)=2, round(0.5*3)=2 > 1 left -> clipped to 1, last 0.
    assert dirichlet_counts(np.array([0.5, 0.5, 0.0]), 3).tolist() == [2, 1, 0]
    assert dirichlet_counts(np.array([1.0]), 7).tolist() == [7]


def test_dirichlet_hand_worked_tiny_case(monkeypatch):
    # 6 rows of label 0 and 4 of label 1; 2 clients of size 5 each. Fix p for both clients.
    labels = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0, 1])
    fixed = iter([np.array([0.8, 0.2]), np.array([0.1, 0.9])])
    real_rng = np.random.default_rng

    class FixedDirichlet:
        def __init__(self, seed):
            self.rng = real_rng(seed)

        def permutation(self, x):
            return self.rng.permutation(x)

        def dirichlet(self, alpha):
            assert np.allclose(alpha, 2.0 * np.array([0.6, 0.4]))  # alpha * q
            return next(fixed)

    monkeypatch.setattr(np.random, "default_rng", FixedDirichlet)
    parts = partition_dirichlet(labels, num_clients=2, alpha=2.0, seed=0)
    # client 0: round(0.8*5)=4 of label 0, 1 of label 1. client 1: round(0.1*5)=0 (0.5 -> 0), 5 of
    # label 1, but only 3 label-1 rows are left: the 2 missing come from label 0 (2 left).
    hist = label_histograms(parts, labels, 2)
    assert hist == [[4, 1], [2, 3]]
    _check_disjoint_sorted(parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))


def test_dirichlet_equal_sizes_disjoint_and_leftover_unused():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=1003)
    parts = partition_dirichlet(labels, num_clients=10, alpha=0.5, seed=1)
    assert [len(p) for p in parts] == [100] * 10
    allrows = _check_disjoint_sorted(parts)
    assert len(allrows) == 1000  # 3 leftover rows are unused


def test_dirichlet_determinism_and_seed():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    a = partition_dirichlet(labels, 5, 1.0, seed=7)
    b = partition_dirichlet(labels, 5, 1.0, seed=7)
    c = partition_dirichlet(labels, 5, 1.0, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_small_alpha_is_far_more_skewed():
    labels = np.repeat(np.arange(4), 500)  # balanced: max-label share 0.25 under IID

    def mean_max_share(alpha):
        shares = []
        for seed in range(5):
            hist = np.array(
                label_histograms(partition_dirichlet(labels, 20, alpha, seed), labels, 4)
            )
            shares.append((hist.max(1) / hist.sum(1)).mean())
        return float(np.mean(shares))

    skewed, flat = mean_max_share(0.1), mean_max_share(100.0)
    assert skewed > 0.8
    assert flat < 0.35
    assert skewed > flat + 0.4


def test_dirichlet_validation():
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(ConfigError) as err:
        partition_dirichlet(labels, 2, alpha=0.0, seed=0)
    assert err.value.key == "data.partition.alpha" and "must be > 0" in err.value.message
    with pytest.raises(ConfigError) as err:
        partition_dirichlet(np.array([-1, -1, -1]), 2, alpha=1.0, seed=0)
    assert err.value.key == "data.partition.kind"
    assert "dirichlet needs labels; use iid or natural" in err.value.message
    with pytest.raises(ConfigError) as err:
        partition_dirichlet(labels, 5, alpha=1.0, seed=0)
    assert err.value.key == "federation.num_clients"


def test_natural_one_client_per_sorted_group():
    groups = ["b", "a", "c", "a", "b", "a"]
    parts = partition_natural(groups, 3)
    assert [p.tolist() for p in parts] == [[1, 3, 5], [0, 4], [2]]  # a, b, c


def test_natural_shards_are_contiguous_and_near_equal():
    groups = ["x"] * 5 + ["y"] * 4
    parts = partition_natural(groups, 4)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4], [5, 6], [7, 8]]


def test_natural_bad_num_clients():
    groups = [f"book{i % 6}" for i in range(60)]
    with pytest.raises(ConfigError) as err:
        partition_natural(groups, 4, group_key="book")
    assert err.value.key == "federation.num_clients"
    assert err.value.message == (
        "natural split by 'book' has 6 groups; set federation.num_clients to a multiple of 6"
    )
    with pytest.raises(ConfigError):
        partition_natural(["a", "b", "b"], 4)  # group 'a' has 1 row for 2 shards


def test_label_histograms_by_hand():
    labels = np.array([0, 2, 2, 1, 0, -1])
    parts = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    assert label_histograms(parts, labels, 3) == [[1, 0, 2], [1, 1, 0]]


def test_make_partition_dispatch_and_errors():
    labels = np.array([0, 1] * 10)
    groups = ["g0", "g1"] * 10
    iid = make_partition("iid", labels=labels, groups=None, num_clients=4, alpha=1.0, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(iid, partition_iid(20, 4, 0), strict=True))
    nat = make_partition("natural", labels=None, groups=groups, num_clients=2, alpha=1.0, seed=0)
    assert nat[0].tolist() == list(range(0, 20, 2))
    dirich = make_partition(
        "dirichlet", labels=labels, groups=None, num_clients=4, alpha=1.0, seed=0
    )
    assert [len(p) for p in dirich] == [5] * 4
    with pytest.raises(ConfigError) as err:
        make_partition("shards", labels=labels, groups=None, num_clients=4, alpha=1.0, seed=0)
    assert err.value.key == "data.partition.kind" and "iid, dirichlet, natural" in err.value.message
    with pytest.raises(ConfigError) as err:
        make_partition("natural", labels=labels, groups=None, num_clients=2, alpha=1.0, seed=0)
    assert err.value.key == "data.partition.kind"
    with pytest.raises(ConfigError) as err:
        make_partition("dirichlet", labels=labels, groups=None, num_clients=2, alpha=-1, seed=0)
    assert err.value.key == "data.partition.alpha"
