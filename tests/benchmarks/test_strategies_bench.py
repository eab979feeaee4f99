"""benchmarks/strategies.py's plan: every strategy's sweep is a valid `fedray tune` file over the
keys it reads, and a cell's row is the seeds' mean and std (no run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import strategies as bench  # noqa: E402

from engine.strategies import STRATEGIES  # noqa: E402
from tuning.sweep import check_space, load_sweep, trial_config  # noqa: E402


def test_the_benchmark_covers_every_registered_strategy() -> None:
    assert sorted(bench.STRATEGIES) == STRATEGIES.names() == sorted(bench.OWN_GRID)


@pytest.mark.parametrize("strategy", bench.STRATEGIES)
def test_each_sweep_loads_and_every_grid_point_is_a_valid_run(strategy: str, tmp_path) -> None:
    args = bench.parse_args(["--alphas", "[0.1]"])
    grid = bench.space(strategy)
    fixed = bench.fixed(args, 0.1, strategy)
    path = bench.sweep_file(tmp_path, strategy, bench.BASE_CONFIG, fixed, grid, bench.TUNE_METRIC)
    sweep, base = load_sweep(path)
    check_space(sweep, base)
    assert base.federation.strategy == strategy and base.data.partition.alpha == 0.1
    assert (
        base.eval.split == "validation" and sweep.metric == "eval/macro_f1"
    )  # never the test split
    test_runs = bench.fixed(
        args, 0.1, strategy
    )  # the seeds' runs: the same rows held out, test split
    assert (
        test_runs["data.validation_fraction"] == bench.VALIDATION and "eval.split" not in test_runs
    )
    own = bench.OWN_GRID[strategy]
    points = len(bench.CLIENT_LRS) * (len(own[1]) if own else 1)
    assert len(grid) == (2 if own else 1) and points >= 2
    first = {k: v["grid"][0] for k, v in grid.items()}
    assert trial_config(sweep, first).train.lr == bench.CLIENT_LRS[0]  # a key the strategy reads


def test_a_cell_row_is_the_seeds_mean_and_std() -> None:
    def run(accs: list[float], up: float) -> dict:
        records = [{"round": 2 * (i + 1), "eval/accuracy": a, "eval/macro_f1": a / 2}
                   for i, a in enumerate(accs)]  # fmt: skip
        return {"records": records, "summary": {"bytes_up_per_client_round": up}, "wall_s": 1.0}

    row = bench.summarize(
        0.1, "fedadam", {"train.lr": 0.002}, [run([0.5, 0.7], 2e6), run([0.6, 0.9], 2e6)], 3.0
    )
    assert row["accuracy_mean"] == pytest.approx(0.8)
    assert row["accuracy_std"] == pytest.approx(0.1414213562)  # sample std of 0.7 and 0.9
    assert row["macro_f1_mean"] == pytest.approx(0.4) and row["macro_f1_std"] == pytest.approx(
        0.0707106781
    )
    assert row["accuracy_by_round"] == {2: pytest.approx(0.55), 4: pytest.approx(0.8)}
    assert row["mb_up_per_client_round"] == 2.0
    assert (
        "| 0.1 | fedadam | lr 0.002 | 0.800 +- 0.141 | 0.400 +- 0.071 | 0.550 | 0.800 | 2.00 |"
        in bench.markdown([row])
    )


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as err:
        bench.parse_args(["--strategies", "[fedsgd]"])
    assert err.value.code == 2


def test_tuned_settings_replace_the_sweeps_and_every_cell_must_have_one(tmp_path) -> None:
    shipped = ROOT / "benchmarks" / "strategies_tuned.yaml"
    args = bench.parse_args(["--tuned", str(shipped)])  # both alphas, every strategy
    assert args.tuned[(1.0, "fedprox")] == {"train.lr": 0.002, "strategy.mu": 0.1}
    assert args.tuned[(0.1, "fedadam")] == {"train.lr": 0.0005, "strategy.server_lr": 0.003}
    for (alpha, strategy), params in args.tuned.items():  # each a point of the strategy's own grid
        grid = bench.space(strategy)
        assert set(params) == set(grid) and alpha in (0.1, 1.0)
        assert all(v in grid[k]["grid"] for k, v in params.items())
    earlier = tmp_path / "strategies.json"  # an earlier run's output reads back the same way
    earlier.write_text('{"rows": [{"alpha": 1, "strategy": "fedavg", "tuned": {"train.lr": 0.002},'
                       ' "accuracy_mean": 0.7}]}')  # fmt: skip
    args = bench.parse_args(
        ["--tuned", str(earlier), "--alphas", "[1.0]", "--strategies", "[fedavg]"]
    )
    assert args.tuned == {(1.0, "fedavg"): {"train.lr": 0.002}}
    for argv in (["--alphas", "[0.5]"], ["--alphas", "[1.0]", "--strategies", "[fedadam]"]):
        with pytest.raises(SystemExit) as err:  # a cell the file has no setting for
            bench.parse_args(["--tuned", str(earlier), *argv])
        assert err.value.code == 2
    earlier.write_text("rows: [{alpha: 1.0}]")
    with pytest.raises(SystemExit) as err:
        bench.parse_args(["--tuned", str(earlier)])
    assert err.value.code == 2
