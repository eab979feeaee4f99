"""benchmarks/harness.py: a run directory or a sweep folder that already holds the work is read back
(or resumed), and one that holds other work is refused, so a long benchmark can be started again;
a rate tuned on its grid's edge is tuned past it; Ctrl-C ends a benchmark with the line that says how to
continue it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402
from harness import (  # noqa: E402
    INTERRUPTED_EXIT,
    past_edge,
    resume_hint,
    run_experiment,
    sweep_file,
    tune,
    tune_rate,
)

from tests.conftest import tiny_overrides  # noqa: E402


def test_a_run_directory_is_read_back_resumed_or_refused(ray_session, tmp_path) -> None:
    base = ROOT / "configs" / "quickstart.yaml"
    overrides = tiny_overrides(**{"federation.rounds": 2})
    run_dir = tmp_path / "run"
    first = run_experiment(base, overrides, run_dir)
    metrics = (run_dir / "metrics.jsonl").read_bytes()

    again = run_experiment(base, overrides, run_dir)  # finished: read back, not run again
    assert again["summary"] == first["summary"] and again["records"] == first["records"]
    assert again["wall_s"] == first["summary"]["wall_s"]
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics

    (run_dir / "summary.json").unlink()  # stopped before its end: resumed from the checkpoint
    resumed = run_experiment(base, overrides, run_dir)
    assert resumed["summary"]["metrics"] == first["summary"]["metrics"]

    with pytest.raises(RuntimeError, match="holds a run of another config"):
        run_experiment(base, [*overrides, "seed=7"], run_dir)
    assert (run_dir / "summary.json").is_file()


def test_a_sweep_folder_is_read_back_or_refused(ray_session, tmp_path) -> None:
    pairs = (o.split("=", 1) for o in tiny_overrides(**{"federation.rounds": 1}))
    tiny = {key: yaml.safe_load(value) for key, value in pairs}
    fixed = {**tiny, "data.validation_fraction": 0.2}
    grid = {"train.lr": {"grid": [1e-3]}}
    path = sweep_file(
        tmp_path, "s", ROOT / "configs" / "quickstart.yaml", fixed, grid, "eval/accuracy"
    )
    out = tmp_path / "out"
    assert tune(path, out) == {"train.lr": 1e-3}
    results = (out / "results.json").read_bytes()
    assert tune(path, out) == {"train.lr": 1e-3}  # read back, not run again
    assert (out / "results.json").read_bytes() == results

    other = sweep_file(tmp_path, "s", ROOT / "configs" / "quickstart.yaml", fixed,
                       {"train.lr": {"grid": [2e-3]}}, "eval/accuracy")  # fmt: skip
    with pytest.raises(RuntimeError, match="holds another sweep"):
        tune(other, out)


def test_tune_picks_the_best_score_and_reads_a_results_file_written_before_scores(
    tmp_path,
) -> None:
    rows = [
        {"params": {"train.lr": "a"}, "final": 0.40, "score": 0.405},
        {"params": {"train.lr": "b"}, "final": 0.40, "score": 0.53},
        {"params": {"train.lr": "failed"}, "final": None, "score": None},
    ]
    out = tmp_path / "sweep"
    out.mkdir()
    sweep = {"metric": "eval/macro_f1", "mode": "max"}
    (out / "results.json").write_text(json.dumps({"sweep": sweep, "rows": rows}))
    assert tune(tmp_path / "s.yaml", out) == {"train.lr": "b"}
    sweep["mode"] = "min"
    (out / "results.json").write_text(json.dumps({"sweep": sweep, "rows": rows}))
    assert tune(tmp_path / "s.yaml", out) == {"train.lr": "a"}
    old = [{k: v for k, v in r.items() if k != "score"} for r in rows]  # final values tie
    (out / "results.json").write_text(json.dumps({"sweep": sweep, "rows": old}))
    assert tune(tmp_path / "s.yaml", out) == {"train.lr": "a"}  # the first of the tie


def test_ctrl_c_ends_a_benchmark_with_how_to_continue_it(capsys) -> None:
    with pytest.raises(SystemExit) as stop, resume_hint("--resume out/runs/1"):
        raise KeyboardInterrupt
    assert stop.value.code == INTERRUPTED_EXIT == 130
    assert capsys.readouterr().err == "interrupted: continue with --resume out/runs/1\n"
    with pytest.raises(ValueError), resume_hint("--resume x"):  # any other error is not a stop
        raise ValueError("bad")
    assert capsys.readouterr().err == ""


def test_a_best_rate_on_an_edge_of_those_tried_looks_a_factor_further_out() -> None:
    rates = [1e-3, 3e-3, 9e-3]
    assert past_edge(9e-3, rates) == pytest.approx(2.7e-2)
    assert past_edge(1e-3, rates) == pytest.approx(3.33e-4)
    assert past_edge(3e-3, rates) is None


@pytest.mark.parametrize(
    ("mode", "scores", "best", "tried"),
    [
        # a minimised loss: the smallest rate wins, 1e-5 scores lower still and wins, then
        # 3.33e-6 scores higher: the search stops there
        ("min", {3e-5: 0.4, 1e-4: 0.5, 3e-4: 0.6, 1e-5: 0.3, 3.33e-6: 0.35}, 1e-5,
         [3.33e-6, 1e-5, 3e-5, 1e-4, 3e-4]),
        # maximised: the largest wins, 9e-4 scores lower: the rate inside keeps it
        ("max", {3e-5: 0.4, 1e-4: 0.5, 3e-4: 0.6, 9e-4: 0.55}, 3e-4, [3e-5, 1e-4, 3e-4, 9e-4]),
    ],
)  # fmt: skip
def test_a_rate_is_tuned_past_its_grids_edge_in_the_sweeps_direction(
    mode, scores, best, tried, tmp_path, monkeypatch
) -> None:
    def sweep(rates: list[float], name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"mode": mode, "rates": rates}))
        return path

    def fake_tune_scored(path: Path, out: Path) -> tuple[dict, float]:
        rates = yaml.safe_load(path.read_text())["rates"]
        pick = min if mode == "min" else max
        top = pick(rates, key=lambda r: scores[r])
        return {"train.lr": top}, scores[top]

    monkeypatch.setattr(harness, "tune_scored", fake_tune_scored)
    params, rates = tune_rate(sweep, "train.lr", [3e-5, 1e-4, 3e-4], "fam", tmp_path)
    assert params == {"train.lr": pytest.approx(best)} and rates == pytest.approx(tried)
    assert tune_rate(sweep, "train.lr", [3e-5, 1e-4, 3e-4], "fam", tmp_path, edge_steps=0)[1] == [
        3e-5, 1e-4, 3e-4
    ]  # fmt: skip
