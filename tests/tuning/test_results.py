"""A sweep's trial scores and settings over seeds, computed by hand from trial rows (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tuning.results import (
    best_row,
    best_setting,
    grid_edges,
    settings,
    settings_markdown,
    trial_row,
    write_results,
)
from tuning.score import row_score
from tuning.sweep import SweepConfig
from tuning.trial import RUN


def _row(lr: float, seed: int, final: float | None, status: str = "TERMINATED") -> dict:
    return {"params": {"train.lr": lr, "seed": seed}, "final": final, "score": final,
            "status": status}  # fmt: skip


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


CURVES = {  # eval/macro_f1 at rounds 2, 4, 6, 8: every final ties at the majority class
    "a": [0.40, 0.41, 0.41, 0.40],
    "b": [0.40, 0.40, 0.66, 0.40],
    "c": [0.50, 0.70, 0.39, 0.40],
}


def _trials(tmp_path: Path, sweep: SweepConfig) -> list[dict]:
    rows = []
    for name, values in CURVES.items():
        run = tmp_path / name / RUN
        run.mkdir(parents=True)
        lines = [{"round": 2 * (i + 1), "eval/macro_f1": v} for i, v in enumerate(values)]
        lines.insert(1, {"round": 3, "train/loss": 0.5})  # a round without an evaluation
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        rows.append(trial_row(sweep, tmp_path / name, {"train.lr": name}, None))
    return rows


@pytest.mark.parametrize(
    ("window", "mode", "scores", "best"),
    [
        (1, "max", (0.40, 0.40, 0.40), "a"),  # a three-way tie: the first trial
        (2, "max", (0.405, 0.53, 0.395), "b"),  # (0.66 + 0.40) / 2
        (4, "max", (0.405, 0.465, 0.4975), "c"),  # every evaluation
        (2, "min", (0.405, 0.53, 0.395), "c"),
    ],
)
def test_a_trial_scores_the_mean_of_its_last_evaluations(
    tmp_path: Path, window: int, mode: str, scores: tuple, best: str
) -> None:
    sweep = SweepConfig(base="x.yaml", space={"train.lr": {"grid": ["a"]}},
                        metric="eval/macro_f1", mode=mode, score_window=window)  # fmt: skip
    rows = _trials(tmp_path, sweep)
    assert [r["final"] for r in rows] == [0.40, 0.40, 0.40]  # the final value is kept apart
    assert [r["score"] for r in rows] == pytest.approx(scores)
    assert best_row(sweep, rows)["params"] == {"train.lr": best}


def test_a_trial_with_fewer_evaluations_than_the_window_averages_all_it_made(tmp_path) -> None:
    sweep = SweepConfig(base="x.yaml", space={"train.lr": {"grid": ["a"]}},
                        metric="eval/macro_f1", score_window=3)  # fmt: skip
    run = tmp_path / "t" / RUN
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"round": 2, "eval/macro_f1": 0.3}) + "\n")
    row = trial_row(sweep, tmp_path / "t", {}, None)
    assert (row["final"], row["score"], row["status"]) == (0.3, 0.3, "STOPPED")
    empty = trial_row(sweep, tmp_path / "none", {}, "boom")
    assert (empty["score"], empty["status"]) == (None, "ERROR")


def test_settings_average_scores_and_keep_finals() -> None:
    sweep = SWEEP.model_copy(update={"score_window": 2})
    rows = [{**_row(0.1, s, f), "score": sc} for s, f, sc in ((0, 0.4, 0.6), (1, 0.4, 0.8))]
    (only,) = settings(sweep, rows)
    assert only["finals"] == [0.4, 0.4] and only["scores"] == [0.6, 0.8]
    assert only["mean"] == pytest.approx(0.7) and only["std"] == pytest.approx(0.1414, abs=1e-4)
    assert "eval/accuracy (mean of last 2): mean +- std" in settings_markdown(sweep, [only])


def test_a_results_file_written_before_scores_ranks_by_its_final_values() -> None:
    assert row_score({"final": 0.7}) == 0.7
    assert row_score({"final": 0.7, "score": 0.6}) == 0.6


def _full(tid: str, lr: float, score: float) -> dict:
    return {"trial_id": tid, "params": {"train.lr": lr}, "status": "TERMINATED", "error": None,
            "final": score, "score": score, "best": score, "rounds": 8, "bytes_total": 1e6,
            "client_flops": 1e9, "virtual_s": 1.0, "run_dir": None}  # fmt: skip


@pytest.mark.parametrize(("scores", "note"), [((0.4, 0.4, 0.3), 1), ((0.4, 0.5, 0.5), 1),
                                              ((0.4, 0.5, 0.3), 0)])  # fmt: skip
def test_results_name_a_best_trial_tied_with_others(tmp_path: Path, scores, note) -> None:
    base = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    sweep = SweepConfig(base=str(base), space={"train.lr": {"grid": [1e-3, 2e-3, 3e-3]}})
    rows = [
        _full(f"t{i}", lr, s)
        for i, (lr, s) in enumerate(zip((1e-3, 2e-3, 3e-3), scores, strict=True))
    ]
    table = write_results(sweep, None, tmp_path, rows, 1.0)
    first = rows[scores.index(max(scores))]
    assert f"best: trial {first['trial_id']} " in table  # the first of a tie is kept
    assert ("note: 1 other trial(s) tie with it" in table) == bool(note)
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["train"]["lr"] == first["params"]["train.lr"]


@pytest.mark.parametrize(
    ("scores", "edge"),
    [((0.4, 0.5, 0.3), None), ((0.4, 0.3, 0.5), "largest"), ((0.5, 0.3, 0.4), "smallest")],
)
def test_results_say_when_the_best_sits_at_an_edge_of_its_grid(tmp_path, scores, edge) -> None:
    base = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    lrs = (1e-3, 2e-3, 3e-3)
    sweep = SweepConfig(base=str(base), space={"train.lr": {"grid": list(lrs)}})
    rows = [_full(f"t{i}", lr, s) for i, (lr, s) in enumerate(zip(lrs, scores, strict=True))]
    table = write_results(sweep, None, tmp_path, rows, 1.0)
    best_lr = lrs[scores.index(max(scores))]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["best_at_grid_edge"] == ({"train.lr": edge} if edge else {})
    note = f"note: the best train.lr, {best_lr}, is the {edge} value of its grid"
    assert (note in table) == bool(edge) and ("of its grid" in table) == bool(edge)


def test_only_numeric_grids_of_three_or_more_have_edges() -> None:
    space = {"train.lr": {"grid": [1e-3, 2e-3]}, "method.name": {"grid": ["lora", "ia3", "bitfit"]},
             "method.r": {"grid": [2, 4, 8]}, "train.batch_size": {"choice": [8, 16, 32]}}  # fmt: skip
    sweep = SweepConfig(base="x.yaml", space=space)
    best = {"train.lr": 2e-3, "method.name": "bitfit", "method.r": 2, "train.batch_size": 32}
    assert grid_edges(sweep, best) == {"method.r": "smallest"}
    assert grid_edges(sweep, {**best, "method.r": 4}) == {}
