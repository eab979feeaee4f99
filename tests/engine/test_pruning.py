"""Pruning scores and selection, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.pruning import (
    el2n,
    keep_hardest,
    keep_hardest_per_class,
    keep_random,
    kept_count,
    sample_loss,
    score_batch,
)


def test_el2n_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4]
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    labels = torch.tensor([0, 1])
    got = el2n(logits, labels)
    # label 0: ||(1/4 - 1, 3/4)|| = 0.75 * sqrt(2); label 1: ||(1/4, 3/4 - 1)|| = 0.25 * sqrt(2)
    torch.testing.assert_close(got, torch.tensor([0.75 * math.sqrt(2), 0.25 * math.sqrt(2)]))


def test_loss_score_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    torch.testing.assert_close(
        sample_loss(logits, torch.tensor([1])), torch.tensor([-math.log(0.75)])
    )
    assert score_batch("loss", logits, torch.tensor([0]))[0] == pytest.approx(math.log(4.0))
    with pytest.raises(ValueError, match="unknown pruning score"):
        score_batch("grand", logits, torch.tensor([0]))


@pytest.mark.parametrize("n,ratio,want", [(10, 0.5, 5), (10, 0.25, 3), (3, 0.01, 1), (7, 1.0, 7)])
def test_kept_count(n, ratio, want):
    assert kept_count(n, ratio) == want


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_kept_count_refuses_bad_ratios(ratio):
    with pytest.raises(ValueError, match="keep_ratio"):
        kept_count(10, ratio)


def test_keep_hardest_keeps_highest_scores_ties_by_row_order():
    rows = np.array([40, 10, 30, 20, 50])
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.2])
    # highest: rows 10 and 20 (tied 0.9, both kept), then 30 (0.5)
    assert keep_hardest(rows, scores, 0.6).tolist() == [10, 20, 30]
    # a tie at the cut goes to the earlier row in the client's order (row 10 before row 20)
    assert keep_hardest(rows, scores, 0.2).tolist() == [10]


def test_keep_random_is_seeded_and_a_subset():
    rows = np.arange(100, 120)
    a = keep_random(rows, 0.5, np.random.default_rng(3))
    b = keep_random(rows, 0.5, np.random.default_rng(3))
    assert a.tolist() == b.tolist() and len(a) == 10 and set(a) <= set(rows)


def test_keep_hardest_per_class_keeps_the_label_mix():
    rows = np.arange(8)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # class 1 is all "hard" to a model leaning to class 0: global selection would keep only it
    scores = np.array([0.1, 0.2, 0.3, 0.15, 0.9, 0.8, 0.95, 0.7])
    assert keep_hardest(rows, scores, 0.5).tolist() == [4, 5, 6, 7]
    got = keep_hardest_per_class(rows, scores, labels, 0.5)
    assert got.tolist() == [1, 2, 4, 6]  # the two hardest of each label
