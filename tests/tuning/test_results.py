"""A sweep's settings over seeds, computed by hand from trial rows (no Ray)."""

from __future__ import annotations

import pytest

from tuning.results import best_setting, settings, settings_markdown
from tuning.sweep import SweepConfig


def _row(lr: float, seed: int, final: float | None, status: str = "TERMINATED") -> dict:
    return {"params": {"train.lr": lr, "seed": seed}, "final": final, "status": status}


SWEEP = SweepConfig(base="x.yaml", space={"train.lr": {"grid": [0.1, 0.2]}}, seeds=[0, 1, 2])


def test_mean_std_and_missing_seeds_by_hand() -> None:
    rows = [
        _row(0.1, 0, 0.70), _row(0.1, 1, 0.80), _row(0.1, 2, 0.90),
        _row(0.2, 0, 0.85), _row(0.2, 1, None, "ERROR"), _row(0.2, 2, 0.60, "STOPPED"),
    ]  # fmt: skip
    a, b = settings(SWEEP, rows)
    assert a["params"] == {"train.lr": 0.1} and a["seeds"] == [0, 1, 2] and a["n"] == 3
    assert a["mean"] == pytest.approx(0.8) and a["std"] == pytest.approx(0.1)  # sqrt(0.02 / 2)
    assert (a["min"], a["max"], a["missing"]) == (0.70, 0.90, [])
    # a failed seed and one stopped early (ASHA) are not averaged in: they are named as missing
    assert b["n"] == 1 and b["mean"] == 0.85 and b["std"] == 0.0 and b["missing"] == [1, 2]
    assert best_setting(SWEEP, [a, b]) is b  # 0.85 > 0.8
    assert best_setting(SWEEP.model_copy(update={"mode": "min"}), [a, b]) is a
    table = settings_markdown(SWEEP, [a, b])
    assert "| 0.1 | 3 | 0.8 +- 0.1 | 0.7 | 0.9 | - |" in table
    assert "| 0.2 | 1 | 0.85 +- 0 | 0.85 | 0.85 | 1, 2 |" in table


def test_a_setting_with_no_finished_seed_has_no_mean() -> None:
    (only,) = settings(SWEEP, [_row(0.1, 0, None, "ERROR")])
    assert only["n"] == 0 and only["mean"] is None and only["std"] is None
    assert best_setting(SWEEP, [only]) is None
