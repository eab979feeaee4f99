"""benchmarks/harness.py: a run directory or a sweep folder that already holds the work is read back
(or resumed), and one that holds other work is refused, so a long benchmark can be started again;
Ctrl-C ends one with the line that says how to continue it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import INTERRUPTED_EXIT, resume_hint, run_experiment, sweep_file, tune  # noqa: E402

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
