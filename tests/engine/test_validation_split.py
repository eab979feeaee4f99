"""The validation split: training rows held out before the clients' split, evaluated with eval.split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actors.launch import start_run
from engine.backend import LocalBackend
from engine.config import validate_config
from engine.data.batching import encode, take
from engine.errors import ConfigError
from engine.models import load_tokenizer
from engine.prepare import held_out_rows, prepare

TINY = {
    "model": {"name": "tiny-bert-random", "max_length": 32},
    "data": {"max_train_samples": 60, "max_test_samples": 16},
    "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": 1},
    "train": {"local_steps": 1, "batch_size": 4},
    "method": {"name": "lora", "r": 2},
    "wandb": {"mode": "disabled"},
}


def _cfg(**sections):
    raw = {k: dict(v) for k, v in TINY.items()}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return validate_config(raw)


def test_held_out_rows_count_order_and_seed() -> None:
    rows = held_out_rows(10, 0.3, seed=0)
    assert len(rows) == 3 and list(rows) == sorted(set(rows.tolist()))
    assert rows.min() >= 0 and rows.max() < 10
    np.testing.assert_array_equal(rows, held_out_rows(10, 0.3, seed=0))
    assert any(not np.array_equal(rows, held_out_rows(10, 0.3, seed=s)) for s in (1, 2, 3))
    assert len(held_out_rows(10, 0.0, seed=0)) == 0
    assert len(held_out_rows(10, 0.01, seed=0)) == 1  # a fraction > 0 holds out at least one row
    with pytest.raises(ConfigError, match="data.validation_fraction"):
        held_out_rows(1, 0.5, seed=0)


def test_take_equals_encoding_those_rows() -> None:
    tok = load_tokenizer("tiny-bert-random")
    texts = ["a short one", "a somewhat longer text than the first", "x", "four words in here"]
    labels = np.array([0, 1, 1, 0])
    whole = encode(texts, labels, tok, 16)
    rows = np.array([3, 0, 2])
    got, want = take(whole, rows), encode([texts[i] for i in rows], labels[rows], tok, 16)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.offsets, want.offsets)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert len(take(whole, np.zeros(0, dtype=np.int64))) == 0


def test_no_client_holds_a_validation_row_and_eval_split_picks_them() -> None:
    plain = prepare(_cfg())
    held = prepare(_cfg(data={"validation_fraction": 0.2}))
    on_val = prepare(_cfg(data={"validation_fraction": 0.2}, eval={"split": "validation"}))
    rows = held.validation_rows
    assert len(rows) == 12 and len(plain.validation_rows) == 0
    clients = np.concatenate(held.parts)
    assert not set(clients.tolist()) & set(rows.tolist())
    assert sorted([*clients.tolist(), *rows.tolist()]) == list(range(60))  # nothing else lost
    assert sorted(np.concatenate(plain.parts).tolist()) == list(range(60))
    # eval.split changes what is evaluated, never what the clients train on
    for a, b in zip(held.parts, on_val.parts, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(held.validation_rows, on_val.validation_rows)
    assert len(held.test) == 16  # the test split
    np.testing.assert_array_equal(on_val.test.labels, held.train.labels[rows])
    np.testing.assert_array_equal(on_val.test.lengths, held.train.lengths[rows])
    # the held-out rows depend on the seed only, not on how the rest is split
    skew = prepare(
        _cfg(data={"validation_fraction": 0.2, "partition": {"kind": "dirichlet", "alpha": 0.5}})
    )
    np.testing.assert_array_equal(skew.validation_rows, rows)


def test_validation_split_needs_held_out_rows() -> None:
    with pytest.raises(ConfigError, match="data.validation_fraction"):
        _cfg(eval={"split": "validation"})
    with pytest.raises(ConfigError, match="validation_fraction"):
        _cfg(data={"validation_fraction": 0.6})


def test_a_run_evaluated_on_validation_says_so(tmp_path) -> None:
    cfg = _cfg(data={"validation_fraction": 0.2}, eval={"split": "validation"})
    run = start_run(cfg, out=str(tmp_path / "run"), backend=LocalBackend())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_split"] == "validation"
    correct = summary["metrics"]["accuracy"] * 12  # accuracy over the 12 held-out rows
    assert abs(correct - round(correct)) < 1e-9
