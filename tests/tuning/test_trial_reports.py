"""What a trial reports to Tune, and so what ASHA compares: computed by hand (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuning.score import TUNE_SCORE, tune_metric
from tuning.sweep import SweepConfig
from tuning.trial import TuneReports

M = "eval/accuracy"


def _sweep(window: int) -> SweepConfig:
    return SweepConfig(base="x.yaml", space={"train.lr": {"grid": [0.1]}}, score_window=window)


def test_with_a_window_of_one_tune_ranks_the_metric_itself(tmp_path: Path) -> None:
    reports = TuneReports(_sweep(1), tmp_path)
    assert reports({"round": 1, "train/loss": 0.9}) is None  # no evaluation: nothing to compare
    out = reports({"round": 2, "train/loss": 0.7, M: 0.6})
    assert out == {"round": 2, "train/loss": 0.7, M: 0.6}
    assert TUNE_SCORE not in out and tune_metric(M, 1) == M


def test_with_a_window_tune_ranks_the_running_mean_of_the_last_evaluations(tmp_path) -> None:
    reports = TuneReports(_sweep(2), tmp_path)
    assert tune_metric(M, 2) == TUNE_SCORE
    seen = [reports({"round": r, M: v}) for r, v in [(2, 0.5), (4, 0.7), (6, 0.6)]]
    assert [s[TUNE_SCORE] for s in seen] == pytest.approx([0.5, 0.6, 0.65])
    assert reports({"round": 7, "train/loss": 0.1}) is None
    out = reports({"round": 8, M: 0.9})
    assert out["train/loss"] == 0.1  # the latest value of every series rides along
    assert out[TUNE_SCORE] == pytest.approx(0.75)


def test_a_resumed_trial_scores_with_the_values_its_run_already_holds(tmp_path: Path) -> None:
    # the run had evaluated rounds 2, 4 and 6, and its checkpoint covers round 4: round 6 runs again
    lines = [{"round": 2, M: 0.5}, {"round": 4, M: 0.7}, {"round": 6, M: 0.1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    reports = TuneReports(_sweep(2), tmp_path)
    assert reports({"round": 5, "train/loss": 0.3}) is None
    assert reports({"round": 6, M: 0.8})[TUNE_SCORE] == pytest.approx((0.7 + 0.8) / 2)
    # a run resumed from round 1 (no usable checkpoint) never mixes in a value it replaced
    again = TuneReports(_sweep(3), tmp_path)
    assert again({"round": 2, M: 0.2})[TUNE_SCORE] == pytest.approx(0.2)
