"""benchmarks/fedpetuning_table.py's tuned plan (a cell's rate sweep on the validation split, the
seeds), a cell's row over seeds (no run), and a grid stopped with Ctrl-C."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fedpetuning_table as bench  # noqa: E402
import harness  # noqa: E402

from engine.config import read_yaml  # noqa: E402
from tuning.sweep import check_space, load_sweep, trial_config  # noqa: E402


@pytest.mark.parametrize("method", ["full", "lora", "prefix", "ia3"])
def test_a_cells_sweep_tries_its_rate_times_the_factors_on_the_validation_split(
    method, tmp_path
) -> None:
    raw = bench.cell_raw(read_yaml(bench.BASE_CONFIG), method, "dir1.0", 2e-3)
    raw["data"]["validation_fraction"] = bench.VALIDATION
    sweep, base = load_sweep(bench.cell_sweep(raw, 2e-3, tmp_path, smoke=False))
    check_space(sweep, base)
    assert sweep.space["method.lr"]["grid"] == [pytest.approx(2e-3 / 3, rel=1e-3), 2e-3, 6e-3]
    assert base.eval.split == "validation" and base.data.validation_fraction == bench.VALIDATION
    assert sweep.metric == "eval/accuracy" and base.seed == 0
    # scored by the validation accuracy at rounds 6 and 8 of 8
    assert (base.eval.every, sweep.score_window) == (bench.TUNE_EVERY, bench.TUNE_WINDOW) == (2, 2)
    short = {**raw, "federation": {**raw["federation"], "rounds": 2}}  # --rounds 2: one evaluation
    sweep, base = load_sweep(bench.cell_sweep(short, 2e-3, tmp_path / "short", smoke=False))
    assert (base.eval.every, sweep.score_window) == (2, 1)
    assert base.method.name == method and base.data.partition.alpha == 1.0
    assert trial_config(sweep, {"method.lr": 6e-3}).method.lr == 6e-3  # the key the method reads


@pytest.mark.parametrize(
    ("scores", "best", "tried"),
    [
        # inside the grid: no more trials
        ({6.67e-4: 0.80, 2e-3: 0.85, 6e-3: 0.82}, 2e-3, [6.67e-4, 2e-3, 6e-3]),
        # the largest wins, then 1.8e-2 beats it, then 5.4e-2 does too: EDGE_STEPS (2) reached
        ({6.67e-4: 0.80, 2e-3: 0.81, 6e-3: 0.82, 1.8e-2: 0.83, 5.4e-2: 0.84}, 5.4e-2,
         [6.67e-4, 2e-3, 6e-3, 1.8e-2, 5.4e-2]),
        # the smallest wins; 2.22e-4 only ties it: the rate inside keeps the cell
        ({6.67e-4: 0.85, 2e-3: 0.81, 6e-3: 0.80, 2.22e-4: 0.85}, 6.67e-4,
         [2.22e-4, 6.67e-4, 2e-3, 6e-3]),
    ],
)  # fmt: skip
def test_a_cells_rate_is_tuned_past_the_edge_of_its_grid(
    scores, best, tried, tmp_path, monkeypatch
) -> None:
    swept = []

    def fake_tune_scored(path: Path, out: Path) -> tuple[dict, float]:
        sweep, _ = load_sweep(path)
        rates = sweep.space["method.lr"]["grid"]
        swept.append((out.name, rates))
        top = max(rates, key=lambda r: scores[r])
        return {"method.lr": top}, scores[top]

    monkeypatch.setattr(harness, "tune_scored", fake_tune_scored)
    raw = bench.cell_raw(read_yaml(bench.BASE_CONFIG), "lora", "iid", 2e-3)
    raw["data"]["validation_fraction"] = bench.VALIDATION
    got, rates = bench.tune_cell(raw, 2e-3, tmp_path, smoke=False)
    assert got == pytest.approx(best) and rates == pytest.approx(tried)
    edges = [(name, r) for name, r in swept[1:]]
    assert [name for name, _ in edges] == [f"lora-iid-edge{k}" for k in range(1, len(edges) + 1)]
    assert all(len(r) == 1 for _, r in edges)  # one trial per step past the edge
    assert len(edges) == len(tried) - 3 <= harness.EDGE_STEPS


def test_tuned_tables_never_run_the_tuning_seed() -> None:
    assert bench.seeds_of(bench.parse_args(["--tune", "--seeds", "3"])) == [1, 2, 3]
    assert bench.seeds_of(bench.parse_args(["--seeds", "2"])) == [0, 1]
    assert bench.seeds_of(bench.parse_args([])) == [0]
    with pytest.raises(SystemExit, match="--seeds"):
        bench.parse_args(["--seeds", "0"])


def run(
    acc: float, f1: float, curve: dict[int, float] | None = None, chose: int | None = None
) -> dict:
    """A finished run as harness.run_config returns it; `curve`: its test accuracy by round (the
    final one only when None); `chose`: the round eval.select: validation picked."""
    picked = None if chose is None else {"round": chose, "metrics": {"accuracy": curve[chose]}}
    summary = {"metrics": {"accuracy": acc, "macro_f1": f1}, "best": {}, "rounds_completed": 8,
               "selected": picked,
               "trainable_params": 3, "total_params": 9, "bytes_up_per_client_round": 2e6,
               "client_flops_per_round": 4e9, "comm_bytes_total": 10, "wall_s": 7.0}  # fmt: skip
    records = [{"round": r, "eval/accuracy": a} for r, a in (curve or {8: acc}).items()]
    return {"summary": summary, "records": records, "wall_s": 8.0, "run_dir": f"run{acc}"}


def test_a_cells_row_is_its_seeds_mean_and_std() -> None:
    row = bench.row_of("lora", "iid", 2e-3, [run(0.7, 0.6), run(0.9, 0.7), run(0.8, 0.8)])
    assert row["accuracy"] == pytest.approx(0.8) and row["accuracy_std"] == pytest.approx(0.1)
    assert row["macro_f1"] == pytest.approx(0.7) and row["macro_f1_std"] == pytest.approx(0.1)
    assert row["seeds"] == 3 and row["accuracy_by_seed"] == [0.7, 0.9, 0.8]
    assert row["mb_up_per_client_round"] == 2.0 and row["client_gflops_per_round"] == 4.0
    assert row["wall_s"] == 24.0 and row["run_wall_s"] == 21.0
    assert row["window_accuracy"] is None  # one evaluation: no window
    line = bench.markdown([{**row, "reduction_vs_full": None}], "").splitlines()[2]
    assert line.startswith("| lora | iid | 0.002 | 0.800 +- 0.100 | - | - | 0.700 +- 0.100 |")


def test_a_tuned_cells_row_averages_the_last_evaluations_as_tuning_scored() -> None:
    # under label skew the final evaluation can fall back to the majority class
    runs = [run(0.67, 0.4, {2: 0.6, 4: 0.7, 6: 0.81, 8: 0.67}, chose=6),
            run(0.83, 0.8, {2: 0.6, 4: 0.7, 6: 0.79, 8: 0.83}, chose=4)]  # fmt: skip
    row = bench.row_of("full", "dir1.0", 5e-5, runs)
    assert bench.TUNE_WINDOW == 2
    assert row["window_accuracy"] == pytest.approx((0.74 + 0.81) / 2)
    assert row["window_accuracy_std"] == pytest.approx(abs(0.74 - 0.81) / 2**0.5)
    assert row["accuracy_by_round"] == pytest.approx({2: 0.6, 4: 0.7, 6: 0.8, 8: 0.75})
    line = bench.markdown([{**row, "reduction_vs_full": None}], "").splitlines()[2]
    # the test accuracy at each seed's validation-chosen round: 0.81 (round 6) and 0.7 (round 4)
    assert row["selected_accuracy"] == pytest.approx(0.755)
    assert row["selected_accuracy_std"] == pytest.approx(0.11 / 2**0.5)
    assert row["selected_round_by_seed"] == [6, 4]
    assert line.startswith(
        "| full | dir1.0 | 5e-05 | 0.750 +- 0.113 | 0.775 +- 0.049 | 0.755 +- 0.078 |"
    )


def test_a_grid_stopped_with_ctrl_c_says_how_to_resume_and_writes_no_table(
    ray_session, tmp_path, monkeypatch, capsys
) -> None:
    def stop(*_: object) -> list:
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_grid", stop)
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as end:
        bench.main(["--smoke", "--out", str(tmp_path), "--resume", str(runs)])
    assert end.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == f"interrupted: continue with --resume {runs}"
    assert not list(tmp_path.glob("fedpetuning_table*.*"))  # no table of a grid cut short


@pytest.mark.parametrize(
    ("flags", "every", "seeds", "select"),
    [(["--tune"], 2, [1], "validation"), ([], 8, [0], None)],
)
def test_tuned_table_runs_evaluate_the_test_split_at_the_rounds_tuning_scored(
    flags, every, seeds, select, tmp_path, monkeypatch
) -> None:
    ran = []

    def fake_run_cell(raw: dict, run_dir) -> dict:
        ran.append(raw)
        return run(0.8, 0.7)

    monkeypatch.setattr(bench, "run_cell", fake_run_cell)
    monkeypatch.setattr(bench, "tune_cell", lambda raw, lr, folder, smoke: (lr, [lr]))
    args = bench.parse_args([*flags, "--methods", "lora", "--partitions", "dir1.0"])
    base, _ = bench.base_config(args)
    rows = bench.run_grid(args, base, tmp_path)
    assert [r["eval"]["every"] for r in ran] == [every] and [r["seed"] for r in ran] == seeds
    assert [r["eval"].get("select") for r in ran] == [select]  # tuned: select on validation too
    if select:
        assert bench.validate_config(ran[0]).eval.select == "validation"  # a config that runs
    assert rows[0]["accuracy"] == 0.8 and rows[0]["error"] is None
