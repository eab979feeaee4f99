"""`fedray tune` killed by SIGKILL (or stopped by Ctrl-C) mid-trial, then `fedray tune --resume`:
every trial's run ends as the same run never stopped (an unfinished trial continues its fedray run
from its checkpoint), and the sweep's wall time counts the stopped part."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from actors.launch import start_run
from engine.backend import LocalBackend
from engine.config import load_config
from fedray.cli import main
from tests.conftest import tiny_sweep
from tests.e2e.test_sigkill_resume import TIMEOUT_S, _rows, _start
from tuning.clock import ELAPSED_FILE
from tuning.sweep import load_sweep
from tuning.tune import SWEEP_FILE

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 8


def _sweep(tmp_path: Path) -> Path:
    # Every client task first sleeps 0.3 wall seconds (faults.client_delay_*: no number changes, the
    # virtual clock ignores it), so seconds of the sweep are left when the test sees round 2's
    # checkpoint: a test process slowed by a busy machine still signals mid-sweep.
    extra = {"federation.rounds": ROUNDS, "checkpoint.every": 1, "ray.num_cpus": 2,
             "resources.client_num_cpus": 0.25, "eval.every": 2,
             "faults.client_delay_prob": 1.0, "faults.client_delay_s": 0.3}  # fmt: skip
    space = {"train.lr": {"grid": [0.001, 0.003]}}
    return tiny_sweep(tmp_path, ROOT / "configs" / "quickstart.yaml", space, extra, name="resume2")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_stopped_sweep_resumes_its_unfinished_trials_exactly(tmp_path: Path, sig) -> None:
    """SIGKILL: the whole process group dies at once. SIGINT (Ctrl-C) to the driver: fedray tune
    writes no results, says how to continue and exits 130."""
    out = tmp_path / "sweep"
    job = _start(["tune", str(_sweep(tmp_path)), "--out", str(out)], tmp_path / "tune.log")
    deadline = time.monotonic() + TIMEOUT_S
    while not list(out.glob("trials/*/run/checkpoints/round_00002/meta.json")):
        assert job.proc.poll() is None, job.log.read_text()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    if sig == signal.SIGKILL:
        os.killpg(job.proc.pid, signal.SIGKILL)
        job.proc.wait()
    else:
        os.kill(job.proc.pid, signal.SIGINT)
        try:
            assert job.proc.wait(timeout=TIMEOUT_S) == 130, job.log.read_text()[-4000:]
        finally:
            job.stop()  # the rest of its Ray, if any outlived it
        log = job.log.read_text()
        assert f"interrupted: continue the sweep with fedray tune --resume {out}" in log
        assert "Traceback" not in log, log[-4000:]
    runs = sorted(out.glob("trials/*/run"))
    unfinished = [r for r in runs if not (r / "summary.json").is_file()]
    assert unfinished, "every trial had finished: the kill came too late to test anything"
    assert not (out / "results.json").exists()
    clock = out / ELAPSED_FILE  # saved on Ctrl-C; before SIGKILL only if a periodic save came
    assert clock.is_file() or sig == signal.SIGKILL
    stopped_s = json.loads(clock.read_text())["wall_s"] if clock.is_file() else None

    t0 = time.monotonic()
    log = _start(["tune", "--resume", str(out)], tmp_path / "resume.log").finish()
    resumed_s = time.monotonic() - t0
    assert "continues after round" in log  # a trial picked its run up from a checkpoint
    results = json.loads((out / "results.json").read_text())
    if stopped_s is not None:  # the sweep's wall time counts the stopped part too
        assert stopped_s < results["sweep"]["wall_s"] < stopped_s + resumed_s
    rows = results["rows"]
    assert sorted(r["params"]["train.lr"] for r in rows) == [0.001, 0.003]
    assert all(r["status"] == "TERMINATED" and r["rounds"] == ROUNDS for r in rows), rows
    for run in sorted(out.glob("trials/*/run")):
        ref = start_run(load_config(run / "config.yaml"), out=str(tmp_path / "ref" / run.parent.name),
                        backend=LocalBackend())  # fmt: skip
        assert _rows(run / "metrics.jsonl", "wall") == _rows(ref / "metrics.jsonl", "wall")
        assert _rows(run / "clients.jsonl", "cpu_s") == _rows(ref / "clients.jsonl", "cpu_s")


def test_a_sweep_stopped_before_tune_saved_its_state_runs_its_trials_on_resume(
    ray_session, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Ctrl-C between `sweep.yaml` and Tune's first saved state leaves a sweep with nothing to
    restore: --resume runs its trials from the start instead of refusing the folder."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    sweep, _ = load_sweep(tiny_sweep(tmp_path, ROOT / "configs" / "quickstart.yaml",
                                     {"train.lr": {"grid": [0.001]}}, {"federation.rounds": 1}))  # fmt: skip
    out = tmp_path / "sweep"
    out.mkdir()
    (out / SWEEP_FILE).write_text(yaml.safe_dump(sweep.model_dump(), sort_keys=False))
    assert main(["tune", "--resume", str(out)]) == 0
    assert "stopped before Ray Tune saved its state" in capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["params"]["train.lr"], r["status"], r["rounds"]) for r in rows] == [
        (0.001, "TERMINATED", 1)
    ]
    assert main(["tune", "--resume", str(tmp_path / "nothing")]) == 2  # not a sweep: one line
    assert "is not a fedray sweep directory" in capsys.readouterr().err
