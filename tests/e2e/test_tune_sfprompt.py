"""`fedray tune`: a 2x2 SFPrompt sweep on the shared 2-CPU Ray, its table, best config and errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from engine.config import load_config
from fedray.cli import main
from tests.conftest import tiny_sweep

ROOT = Path(__file__).resolve().parents[2]
SFPROMPT = ROOT / "configs" / "sfprompt" / "amazon_reviews.yaml"
RAY_FORWARDED = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")
TINY = {
    "split.tail_layers": 1,
    "server.num_cpus": 0.25,
    "server.torch_threads": 1,
    "resources.client_num_cpus": 0.25,
    "federation.rounds": 2,
    "eval.every": 1,
    # an epoch over the kept samples, not a fixed step count: a lower keep ratio trains, and sends, less
    "train.local_steps": None,
    "train.local_epochs": 1,
}


def write_sweep(tmp_path: Path, **fields) -> Path:
    grid = {"pruning.keep_ratio": {"grid": [0.5, 1.0]}, "split.prompt_length": {"grid": [0, 4]}}
    space = fields.pop("space", grid)
    return tiny_sweep(tmp_path, SFPROMPT, space, TINY, name="sf2x2", **fields)


@pytest.fixture(scope="module")
def sweep_dir(ray_session, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tune")
    out = tmp / "sweep"
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")
    try:
        assert main(["tune", str(write_sweep(tmp)), "--out", str(out)]) == 0
    finally:
        mp.undo()
    return out


def test_table_has_every_cell_and_sane_bytes(sweep_dir: Path) -> None:
    res = json.loads((sweep_dir / "results.json").read_text())
    rows = res["rows"]
    assert res["sweep"]["axes"] == ["pruning.keep_ratio", "split.prompt_length"]
    cells = {(r["params"]["pruning.keep_ratio"], r["params"]["split.prompt_length"]) for r in rows}
    assert cells == {(0.5, 0), (0.5, 4), (1.0, 0), (1.0, 4)} and len(rows) == 4
    for r in rows:
        assert r["status"] == "TERMINATED" and r["error"] is None, r
        assert r["rounds"] == 2 and 0 <= r["final"] <= 1 and r["best"] >= r["final"]
        assert r["bytes_total"] > 0 and r["client_flops"] > 0 and r["virtual_s"] > 0
        run = Path(r["run_dir"])
        cfg = load_config(run / "config.yaml")  # the trial ran what its row says
        assert cfg.pruning.keep_ratio == r["params"]["pruning.keep_ratio"]
        assert cfg.split.prompt_length == r["params"]["split.prompt_length"]
    by = {(r["params"]["pruning.keep_ratio"], r["params"]["split.prompt_length"]): r for r in rows}
    for p in (0, 4):  # half the samples, about half the steps: fewer activations sent
        assert by[(0.5, p)]["bytes_total"] < by[(1.0, p)]["bytes_total"]
    with (sweep_dir / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and {t["trial_id"] for t in table} == {r["trial_id"] for r in rows}


def test_best_yaml_is_the_best_trial_and_runnable(sweep_dir: Path) -> None:
    rows = json.loads((sweep_dir / "results.json").read_text())["rows"]
    best = max(rows, key=lambda r: r["final"])
    cfg = load_config(sweep_dir / "best.yaml")
    assert cfg.pruning.keep_ratio == best["params"]["pruning.keep_ratio"]
    assert cfg.split.prompt_length == best["params"]["split.prompt_length"]
    assert cfg.federation.rounds == 2  # the sweep's fixed overrides are in it too


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"space": {"pruning.keep_ratio": {"grid": [0.5, 2.0]}}}, "space.pruning.keep_ratio"),
        ({"space": {"split.no_such_key": {"grid": [1]}}}, "space.split.no_such_key"),
        ({"metric": "eval/bleu"}, "metric"),
        ({"trial": {"driver_cpus": 64}}, "trial"),
    ],
)
def test_bad_sweep_exits_2_before_any_trial(ray_session, tmp_path, capsys, fields, key) -> None:
    out = tmp_path / "never"
    assert main(["tune", str(write_sweep(tmp_path, **fields)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # Ray forwards earlier tests' worker logs to this shared session's stderr, late, prefixed
    # "(func pid=N)": they are not this command's output.
    err = [line for line in err if not RAY_FORWARDED.match(line)]
    assert len(err) == 1 and err[0].startswith(f"error: {key}:"), err
    assert not (out / "trials").exists()  # no trial started


def test_failed_trial_is_a_row_and_a_restored_sweep_keeps_finished_trials(
    ray_session, tmp_path, monkeypatch
) -> None:
    """A prompt longer than the tiny model's positions fails in its trial only; --resume reruns
    just that one (it fails again) and leaves the finished trial's run untouched."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    space = {"split.prompt_length": {"grid": [4, 600]}}
    sweep = write_sweep(tmp_path, space=space)
    out = tmp_path / "sweep"
    assert main(["tune", str(sweep), "--out", str(out)]) == 0
    rows = {
        r["params"]["split.prompt_length"]: r
        for r in json.loads((out / "results.json").read_text())["rows"]
    }
    assert rows[4]["status"] == "TERMINATED" and rows[4]["final"] is not None
    assert rows[600]["status"] == "ERROR" and "prompt" in rows[600]["error"], rows[600]["error"]
    metrics = Path(rows[4]["run_dir"]) / "metrics.jsonl"
    before = (metrics.stat().st_mtime_ns, metrics.read_text())
    assert main(["tune", "--resume", str(out)]) == 0
    again = {
        r["params"]["split.prompt_length"]: r
        for r in json.loads((out / "results.json").read_text())["rows"]
    }
    assert again[4] == rows[4] and again[600]["status"] == "ERROR"
    assert (metrics.stat().st_mtime_ns, metrics.read_text()) == before
