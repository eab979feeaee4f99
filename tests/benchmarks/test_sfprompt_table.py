"""benchmarks/sfprompt_table.py's plan: tuning sweeps (a lone rate tuned past its grid's edge), tuned
values per row, a row over seeds, the target line (no run)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402
import sfprompt_table as bench  # noqa: E402

from engine.config import apply_overrides, read_yaml, validate_config  # noqa: E402
from tuning.sweep import check_space, load_sweep, trial_config  # noqa: E402


def test_every_row_belongs_to_a_tuned_family() -> None:
    assert {name.split()[0] for name in bench.ROWS} == set(bench.GRIDS)


@pytest.mark.parametrize("fam", sorted(bench.GRIDS))
def test_each_family_tunes_on_validation_and_every_grid_point_is_a_valid_run(fam, tmp_path) -> None:
    args = bench.parse_args(["--tune"])
    common = bench.common_overrides(args)
    sweep, base = load_sweep(bench.family_sweep(args, fam, common, tmp_path))
    check_space(sweep, base)
    assert base.eval.split == "validation" and sweep.metric == "eval/accuracy"
    assert base.data.validation_fraction == bench.VALIDATION
    # the table's runs hold the same rows out and read the test split
    table_run = validate_config(apply_overrides(read_yaml(bench.BASE_CONFIG), common))
    assert table_run.data.validation_fraction == bench.VALIDATION
    assert table_run.eval.split == "test"
    for values in itertools.product(*bench.GRIDS[fam].values()):
        point = dict(zip(bench.GRIDS[fam], values, strict=True))
        cfg = trial_config(sweep, point)
        for key, value in point.items():
            section, field = key.split(".")
            assert getattr(getattr(cfg, section), field) == value
    if fam == "FedFT":
        assert base.algorithm == "fedavg" and base.method.name == "full"


def test_without_tune_no_rows_are_held_out() -> None:
    common = bench.common_overrides(bench.parse_args([]))
    assert not any(o.startswith("data.validation_fraction") for o in common)


def test_a_row_takes_its_familys_values_less_the_phase_it_switches_off() -> None:
    tuned = {"SFPrompt": {"pruning.keep_ratio": 0.75, "local_loss.epochs": 2},
             "FedFT": {"train.lr": 1e-4}}  # fmt: skip
    assert bench.row_params("SFPrompt", tuned) == tuned["SFPrompt"]
    assert bench.row_params("SFPrompt w/o pruning", tuned) == {"local_loss.epochs": 2}
    assert bench.row_params("SFPrompt w/o local loss", tuned) == {"pruning.keep_ratio": 0.75}
    assert bench.row_params("SFPrompt zero-block cut", tuned) == tuned["SFPrompt"]
    assert bench.row_params("FedFT", tuned) == {"train.lr": 1e-4}
    assert bench.row_params("SplitFed", tuned) == {}  # not tuned: the config's values


def test_a_row_is_its_seeds_mean_and_std() -> None:
    def run(acc: float, f1: float, comm: int) -> dict:
        summary = {"metrics": {"accuracy": acc, "macro_f1": f1}, "rounds_completed": 2,
                   "client_flops_per_round": 10.0, "comm_bytes_total": comm,
                   "comm_bytes_by_kind": {}, "client_peak_memory_bytes": comm // 10,
                   "trainable_params": 1, "total_params": 2}  # fmt: skip
        return {"summary": summary, "clients": [{"bytes_up": 3, "bytes_down": 1}], "wall_s": 5.0}

    row = bench._row([run(0.7, 0.6, 400), run(0.9, 0.7, 600)])
    assert row["accuracy"] == pytest.approx(0.8)
    assert row["accuracy_std"] == pytest.approx(0.1414213562)  # sample std of 0.7 and 0.9
    assert row["macro_f1"] == pytest.approx(0.65)
    assert row["macro_f1_std"] == pytest.approx(0.0707106781)
    assert row["bytes_per_round"] == pytest.approx(250)  # (400 / 2 + 600 / 2) / 2
    assert row["bytes_per_client_round"] == 4 and row["client_peak_memory_bytes"] == 60
    assert row["accuracy_by_seed"] == [0.7, 0.9] and row["wall_s"] == 10.0


def test_the_target_needs_both_the_gap_and_the_bytes() -> None:
    def line(gap: float, share: float) -> str:
        row = {"name": "SFPrompt", "accuracy": 0.78, "accuracy_gap_points": gap,
               "bytes_pct_of_fedft": share}  # fmt: skip
        return bench.target_line([row])

    assert "PASS: 0.780 vs FedFT's 0.800 (-2.0 points), 40.0% of its bytes" in line(2.0, 40.0)
    assert "FAIL" in line(3.5, 40.0) and "FAIL" in line(1.0, 61.0)
    assert "PASS" in line(-1.0, 60.0)  # above FedFT, at the bytes bound
    assert "N/A" in bench.target_line([{"name": "FedFT", "accuracy": 0.8}])


def test_the_fronts_keep_the_rows_no_other_row_beats_on_accuracy_and_cost() -> None:
    def row(name: str, acc: float, mb: float, gflops: float) -> dict:
        return {"name": name, "accuracy": acc, "bytes_per_round": mb * 1e6,
                "client_flops_per_round": gflops * 1e9}  # fmt: skip

    rows = [row("FedFT", 0.83, 720, 950), row("SFPrompt", 0.70, 360, 880),
            row("cut", 0.75, 310, 0.002), row("SplitFed", 0.78, 845, 315),
            {"name": "broken", "error": "died"}]  # fmt: skip
    # bytes: SFPrompt costs more than the cut and reaches less; SplitFed more than FedFT for less
    assert bench.fronts(rows) == {
        "bytes_per_round": ["cut", "FedFT"],
        "client_flops_per_round": ["cut", "SplitFed", "FedFT"],
    }
    lines = bench.front_lines(rows)
    assert (
        lines[0]
        == "Pareto front, accuracy vs MB/round: cut (0.750, 310 MB) -> FedFT (0.830, 720 MB)"
    )
    assert lines[1].endswith("SplitFed (0.780, 315 GFLOPs) -> FedFT (0.830, 950 GFLOPs)")


def test_a_crossover_only_run_never_overwrites_the_tables_output() -> None:
    stems = {
        argv: bench.output_stem(bench.parse_args(list(argv)))
        for argv in [
            (),
            ("--only", "table"),
            ("--only", "crossover"),
            ("--smoke",),
            ("--only", "crossover", "--smoke"),
        ]
    }
    assert stems[()] == stems[("--only", "table")] == "sfprompt_table"
    assert stems[("--only", "crossover")] == "sfprompt_crossover"
    assert stems[("--smoke",)] == "sfprompt_table_smoke"
    assert stems[("--only", "crossover", "--smoke")] == "sfprompt_crossover_smoke"


def test_a_family_that_tunes_its_rate_alone_is_tuned_past_its_grids_edge(
    tmp_path, monkeypatch
) -> None:
    scores = {2e-5: 0.80, 5e-5: 0.81, 1e-4: 0.82, 3e-4: 0.83, 9e-4: 0.79}
    swept = []

    def fake_tune_scored(path: Path, out: Path) -> tuple[dict, float]:
        sweep, _ = load_sweep(path)
        swept.append((out.name, sweep.space))
        rates = sweep.space["train.lr"]["grid"]
        top = max(rates, key=lambda r: scores[r])
        return {"train.lr": top}, scores[top]

    monkeypatch.setattr(harness, "tune_scored", fake_tune_scored)
    args = bench.parse_args(["--tune"])
    common = bench.common_overrides(args)
    params, tried = bench.tune_family(args, "FedFT", common, tmp_path)
    assert params == {"train.lr": 3e-4} and tried == pytest.approx([2e-5, 5e-5, 1e-4, 3e-4, 9e-4])
    assert [name for name, _ in swept] == ["FedFT", "FedFT-edge1", "FedFT-edge2"]
    _, base = load_sweep(tmp_path / "FedFT-edge1.yaml")
    assert base.method.name == "full" and base.eval.split == "validation"  # the family's runs

    def fake_tune(path: Path, out: Path) -> dict:
        swept.append((out.name, load_sweep(path)[0].space))
        return {"pruning.keep_ratio": 0.75, "local_loss.epochs": 2}

    monkeypatch.setattr(bench, "tune", fake_tune)
    params, tried = bench.tune_family(args, "SFPrompt", common, tmp_path)
    assert tried is None and swept[-1][0] == "SFPrompt"  # a grid of two knobs: no edge search
