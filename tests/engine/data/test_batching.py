"""Tokenized splits and batches: flat storage, length grouping, dynamic padding, by hand."""

from __future__ import annotations

import numpy as np
import torch

from engine.data.batching import Encoded, collate, eval_batches, make_batches, padded_tokens


def _enc(lengths: list[int]) -> Encoded:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.arange(1, offsets[-1] + 1, dtype=np.int32)
    return Encoded(ids=ids, offsets=offsets, labels=np.arange(len(lengths), dtype=np.int64))


def test_collate_pads_to_the_longest_row() -> None:
    enc = _enc([2, 3, 1])  # rows: [1 2], [3 4 5], [6]
    batch = collate(enc, np.array([2, 0]), pad_id=0)
    assert batch["input_ids"].tolist() == [[6, 0], [1, 2]]
    assert batch["attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert batch["labels"].tolist() == [2, 0]
    assert batch["input_ids"].dtype == torch.int64


def test_every_row_once_per_epoch_and_grouping_cuts_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 128, size=400)
    idx = np.arange(400)
    for grouped in (False, True):
        batches = make_batches(idx, lengths, 16, np.random.default_rng(1), grouped)
        assert sorted(np.concatenate(batches).tolist()) == idx.tolist()
    random_b = make_batches(idx, lengths, 16, np.random.default_rng(1), False)
    grouped_b = make_batches(idx, lengths, 16, np.random.default_rng(1), True)
    real = int(lengths.sum())
    # Grouped batches pad far less than random ones (400 rows fit in one mega-batch: near-zero waste).
    assert padded_tokens(grouped_b, lengths) < 1.05 * real < padded_tokens(random_b, lengths)


def test_batches_are_seeded() -> None:
    lengths = np.arange(1, 51)
    a = make_batches(np.arange(50), lengths, 8, np.random.default_rng(3), True)
    b = make_batches(np.arange(50), lengths, 8, np.random.default_rng(3), True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_eval_batches_sorted_longest_first_and_padded_tokens_by_hand() -> None:
    lengths = np.array([3, 9, 1, 5])
    batches = eval_batches(4, lengths, 2)
    assert [b.tolist() for b in batches] == [[1, 3], [0, 2]]
    assert padded_tokens(batches, lengths) == 2 * 9 + 2 * 3
