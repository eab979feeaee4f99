"""benchmarks/deadline.py: a policy's row over seeds is their mean (accuracy +- sample std), and a bad
--seeds exits 2 (no run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import deadline as bench  # noqa: E402


def seed_row(acc: float, r4: float, virtual_s: float, partial: int, steps: float) -> dict:
    return {"policy": "partial", "deadline_s": 102.8, "accuracy": acc,
            "accuracy_by_round": {2: 0.6, 4: r4}, "virtual_s": virtual_s, "aggregated": 28,
            "partial": partial, "dropped_deadline": 0, "unavailable": 1,
            "phone_steps_mean": steps, "mb_total": 16.9, "wall_s": 300.0}  # fmt: skip


def test_a_policys_row_is_its_seeds_mean_and_std() -> None:
    runs = [seed_row(0.80, 0.70, 700.0, 9, 5.0), seed_row(0.84, 0.74, 800.0, 11, 6.0),
            seed_row(0.82, 0.78, 750.0, 10, 7.0)]  # fmt: skip
    row = bench.summarize(runs)
    assert row["policy"] == "partial" and row["deadline_s"] == 102.8 and row["seeds"] == 3
    assert row["accuracy"] == pytest.approx(0.82) and row["accuracy_std"] == pytest.approx(0.02)
    assert row["accuracy_by_round"] == pytest.approx({2: 0.6, 4: 0.74})
    assert (row["virtual_s"], row["partial"], row["phone_steps_mean"]) == pytest.approx(
        (750.0, 10.0, 6.0)
    )
    assert row["by_seed"] == runs
    line = bench.table([row]).splitlines()[-1]
    assert line == "| partial | 102.8 | 0.820 +- 0.020 | 750.0 | 28 | 10 | 0 | 1 | 6.0 | 16.90 |"


def test_one_seed_keeps_the_single_run_table() -> None:
    row = bench.summarize([seed_row(0.839, 0.7, 765.0, 10, 5.4)])
    assert row["accuracy_std"] == 0.0
    assert bench.table([row]).splitlines()[-1].startswith("| partial | 102.8 | 0.8390 | 765.0 |")


@pytest.mark.parametrize("seeds", ["0", "-1"])
def test_bad_seeds_exit_2(seeds: str) -> None:
    with pytest.raises(SystemExit) as err:
        bench.parse_args(["--seeds", seeds])
    assert err.value.code == 2
