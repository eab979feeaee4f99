"""`fedray tune --seeds N` on a validation split: every setting once per seed, each trial scored by
its last two evaluations, mean and std of the scores per setting."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from engine.config import load_config
from engine.rundir import read_metrics
from fedray.cli import main
from tests.conftest import tiny_sweep
from tuning.score import TUNE_SCORE
from tuning.tune import TUNE_DIR

ROOT = Path(__file__).resolve().parents[2]
EXTRA = {"resources.client_num_cpus": 0.25, "federation.rounds": 2, "eval.every": 1,
         "data.validation_fraction": 0.25, "eval.split": "validation"}  # fmt: skip


@pytest.fixture(scope="module")
def sweep_dir(ray_session, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("seeds")
    space = {"train.lr": {"grid": [0.001, 0.01]}}
    path = tiny_sweep(
        tmp, ROOT / "configs" / "quickstart.yaml", space, EXTRA, name="seeds", score_window=2
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")
    try:
        assert main(["tune", str(path), "--out", str(tmp / "sweep"), "--seeds", "2"]) == 0
    finally:
        mp.undo()
    return tmp / "sweep"


def test_every_setting_runs_once_per_seed_on_the_validation_rows(sweep_dir: Path) -> None:
    res = json.loads((sweep_dir / "results.json").read_text())
    assert res["sweep"]["axes"] == ["train.lr", "seed"] and res["sweep"]["seeds"] == [0, 1]
    cells = sorted((r["params"]["train.lr"], r["params"]["seed"]) for r in res["rows"])
    assert cells == [(0.001, 0), (0.001, 1), (0.01, 0), (0.01, 1)]
    for r in res["rows"]:
        cfg = load_config(Path(r["run_dir"]) / "config.yaml")  # the trial ran what its row says
        assert (cfg.seed, cfg.train.lr) == (r["params"]["seed"], r["params"]["train.lr"])
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert summary["eval_split"] == "validation"
        assert abs(r["final"] * 50 - round(r["final"] * 50)) < 1e-9  # 50 of the 200 rows held out
        evals = [
            m["eval/accuracy"] for m in read_metrics(Path(r["run_dir"])) if "eval/accuracy" in m
        ]
        assert len(evals) == 2 and r["final"] == evals[-1]
        assert r["score"] == pytest.approx((evals[0] + evals[1]) / 2)  # score_window: 2
        # what Tune (ASHA's metric) saw after each evaluation: the running score, not the value
        told = (sweep_dir / TUNE_DIR / r["trial_id"] / "result.json").read_text().splitlines()
        running = [json.loads(line)[TUNE_SCORE] for line in told]
        assert running == pytest.approx([evals[0], r["score"]])


def test_settings_are_the_mean_and_std_of_their_seeds(sweep_dir: Path) -> None:
    res = json.loads((sweep_dir / "results.json").read_text())
    by = {}
    for r in res["rows"]:
        by.setdefault(r["params"]["train.lr"], []).append(r["score"])
    assert [g["params"] for g in res["settings"]] == [{"train.lr": 0.001}, {"train.lr": 0.01}]
    for g in res["settings"]:
        scores = by[g["params"]["train.lr"]]
        assert g["scores"] == scores
        assert g["n"] == 2 and sorted(g["seeds"]) == [0, 1] and g["missing"] == []
        assert g["mean"] == pytest.approx(sum(scores) / 2)
        assert g["std"] == pytest.approx(abs(scores[0] - scores[1]) / 2**0.5)  # sample std of two
        assert g["std"] == pytest.approx(statistics.stdev(scores))
    best = max(res["settings"], key=lambda g: g["mean"])
    cfg = load_config(sweep_dir / "best.yaml")
    assert cfg.train.lr == best["params"]["train.lr"] and cfg.seed == 0  # the base seed
    table = (sweep_dir / "results.md").read_text()
    assert "eval/accuracy (mean of last 2): mean +- std" in table and "| mean of last 2 |" in table


def test_the_report_ranks_and_draws_the_scores(sweep_dir: Path) -> None:
    assert main(["report", str(sweep_dir)]) == 0
    index = (sweep_dir / "report" / "index.md").read_text()
    assert "Trials ranked by eval/accuracy (mean of last 2)" in index
    assert (sweep_dir / "report" / "final_over_seeds.png").is_file()
    res = json.loads((sweep_dir / "results.json").read_text())
    top = max(res["settings"], key=lambda g: g["mean"])
    assert f"{top['mean']:.4g} +- {top['std']:.2g} (mean +- std of 2)" in index
