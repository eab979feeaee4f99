"""eval.select: validation: the held-out rows scored beside the test split, and the test metrics
at the round they chose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from actors.launch import start_run
from engine import rundir
from engine.algorithms.centralized import make_job, train_rounds
from engine.backend import LocalBackend
from engine.config import validate_config
from engine.data.batching import Encoded, Pixels, eval_batches, take
from engine.errors import ConfigError
from engine.evalsets import concat, eval_sets
from engine.prepare import prepare
from engine.summary import selected_of
from tests.engine.test_validation_split import _cfg as split_cfg
from tuning.sweep import reported_metrics, reports

# the validation-split tests' tiny run, 3 rounds; 16 test and 12 validation rows in eval batches
# of 5 (batches that do not divide either)
TINY = {
    "data": {"validation_fraction": 0.2},
    "federation": {"rounds": 3},
    "train": {"local_steps": 2},
    "method": {"lr": 5e-3},
    "eval": {"batch_size": 5},
}


def _cfg(**sections):
    merged = {k: dict(v) for k, v in TINY.items()}
    for key, value in sections.items():
        merged[key] = {**merged.get(key, {}), **value}
    return split_cfg(**merged)


def _encoded(lengths: list[int], first_label: int) -> Encoded:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.arange(offsets[-1], dtype=np.int32) + 100 * first_label
    return Encoded(ids, offsets, np.arange(len(lengths), dtype=np.int64) + first_label)


def test_concat_then_take_gives_each_split_back() -> None:
    a, b = _encoded([3, 1, 4], 0), _encoded([2, 5], 10)
    both = concat(a, b)
    assert len(both) == 5 and both.offsets[-1] == 15
    for part, rows in ((a, [0, 1, 2]), (b, [3, 4])):
        got = take(both, np.array(rows))
        np.testing.assert_array_equal(got.ids, part.ids)
        np.testing.assert_array_equal(got.offsets, part.offsets)
        np.testing.assert_array_equal(got.labels, part.labels)
    img = concat(Pixels(np.zeros((2, 3, 3), np.uint8), np.array([0, 1])),
                 Pixels(np.ones((1, 3, 3), np.uint8), np.array([2])))  # fmt: skip
    assert img.images.shape == (3, 3, 3) and img.labels.tolist() == [0, 1, 2]
    assert img.images[2].sum() == 9
    with pytest.raises(TypeError, match="cannot join"):
        concat(a, img)


def test_eval_batches_cover_each_set_once_and_the_test_batches_are_unchanged() -> None:
    test, val = _encoded([3, 1, 4, 1, 5], 0), _encoded([2, 6, 2], 10)
    alone = eval_sets(test, None)
    assert alone.data is test and [p for p, _, _ in alone.ranges] == ["eval"]
    sets = eval_sets(test, val)
    (p1, test_batches), (p2, val_batches) = sets.batches(2)
    assert (p1, p2) == ("eval", "val")
    want = eval_batches(5, test.lengths, 2)  # what evaluation on the test split alone runs
    assert [b.tolist() for b in test_batches] == [b.tolist() for b in want]
    assert sorted(np.concatenate(val_batches).tolist()) == [5, 6, 7]
    assert [b.tolist() for b in val_batches] == [[6, 5], [7]]  # longest first, stable on ties


def test_selected_is_the_best_validation_round_by_hand() -> None:
    history = [
        {"round": 1, "train/loss": 1.0},
        {"round": 2, "val/loss": 0.9, "val/accuracy": 0.5, "eval/accuracy": 0.40, "eval/loss": 1.0},
        {"round": 4, "val/loss": 0.8, "val/accuracy": 0.7, "eval/accuracy": 0.61, "eval/loss": 0.7,
         "time/eval_wall_s": 3.0},
        {"round": 6, "val/loss": 0.7, "val/accuracy": 0.7, "eval/accuracy": 0.66, "eval/loss": 0.6},
        {"round": 8, "val/loss": 0.6, "val/accuracy": 0.6, "eval/accuracy": 0.70, "eval/loss": 0.5},
    ]  # fmt: skip
    # the first of the tied best rounds; wall times are not metrics
    assert selected_of(history) == {
        "by": "val/accuracy",
        "round": 4,
        "validation": 0.7,
        "metrics": {"accuracy": 0.61, "loss": 0.7},
    }
    lm = [{"round": r, "val/loss": v, "val/perplexity": np.exp(v), "val/accuracy": a,
           "eval/loss": v + 0.1} for r, v, a in ((1, 2.0, 0.9), (2, 1.5, 0.1), (3, 1.7, 0.2))]  # fmt: skip
    assert selected_of(lm)["by"] == "val/loss" and selected_of(lm)["round"] == 2  # lower loss
    assert selected_of([{"round": 1, "eval/accuracy": 0.5, "eval/loss": 1.0}]) is None


def test_select_needs_held_out_rows_and_the_test_split() -> None:
    with pytest.raises(ConfigError, match="data.validation_fraction") as err:
        _cfg(data={"validation_fraction": 0.0}, eval={"select": "validation"})
    assert err.value.key == "eval.select"
    with pytest.raises(ConfigError, match="eval.split: test"):
        _cfg(eval={"select": "validation", "split": "validation"})
    with pytest.raises(ConfigError, match="eval.select"):
        _cfg(eval={"select": "best"})


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / rundir.METRICS).read_text().splitlines()]


def _keys(records: list[dict], prefix: str) -> list[dict]:
    return [{k.split("/", 1)[1]: v for k, v in r.items() if k.startswith(prefix)} for r in records]


def test_a_selecting_run_scores_both_splits_as_runs_of_each_would(tmp_path) -> None:
    def run(name: str, **evals) -> list[dict]:
        cfg = _cfg(eval={**TINY["eval"], **evals})
        return _records(start_run(cfg, out=str(tmp_path / name), backend=LocalBackend()))

    both = run("both", select="validation")
    on_test, on_val = run("test"), run("val", split="validation")
    assert [r["round"] for r in both] == [1, 2, 3]
    # training is the same; eval/* is the test split's, val/* what a validation run reports
    assert [r["train/loss"] for r in both] == [r["train/loss"] for r in on_test]
    assert _keys(both, "eval/") == _keys(on_test, "eval/")
    assert _keys(both, "val/") == _keys(on_val, "eval/")
    assert all(abs(r["val/accuracy"] * 12 - round(r["val/accuracy"] * 12)) < 1e-9 for r in both)
    summary = json.loads((tmp_path / "both" / "summary.json").read_text())
    scores = [r["val/accuracy"] for r in both]
    best = both[scores.index(max(scores))]
    assert summary["selected"]["round"] == best["round"]
    assert summary["selected"]["metrics"]["accuracy"] == best["eval/accuracy"]
    assert summary["metrics"]["accuracy"] == both[-1]["eval/accuracy"]  # the final one stays
    plain = json.loads((tmp_path / "test" / "summary.json").read_text())
    assert plain["selected"] is None


def test_the_centralized_worker_scores_both_splits(tmp_path) -> None:
    def run(name: str, **evals) -> list[dict]:
        raw = {**_cfg(eval={**TINY["eval"], **evals}).model_dump(), "algorithm": "centralized"}
        cfg = validate_config(raw)
        folder = tmp_path / name
        folder.mkdir()
        train_rounds(make_job(cfg, prepare(cfg), folder, None, t_start=0.0), lambda r: None)
        return _records(folder)

    both, on_val = run("both", select="validation"), run("val", split="validation")
    assert _keys(both, "val/") == _keys(on_val, "eval/") and len(both) == 3
    assert all("eval/accuracy" in r for r in both)


def test_a_sweep_may_tune_on_the_validation_metrics_of_a_selecting_run() -> None:
    cfg = _cfg(eval={"select": "validation", "every": 2})
    assert {"val/accuracy", "val/macro_f1", "val/loss"} <= reported_metrics(cfg)
    assert "val/accuracy" not in reported_metrics(_cfg())
    assert reports(cfg, "val/accuracy") == 2  # rounds 2 and 3 (the last)
