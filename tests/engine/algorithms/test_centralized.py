"""Tests for the centralized baseline: budget math, the run-dir contract on Ray Train, determinism, resume."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from actors.launch import start_run
from engine import rundir
from engine.algorithms.centralized import (
    central_spec,
    make_job,
    train_rounds,
    union_rows,
)
from engine.checkpoint import load_checkpoint
from engine.config import load_config
from engine.prepare import prepare
from engine.train import TrainSpec
from tests.conftest import tiny_overrides
from tests.contract import ROUND_KEYS, SUMMARY_KEYS

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "fedpetuning" / "centralized_lora.yaml"
ZERO_KEYS = [k for k in ROUND_KEYS if k.startswith(("comm/", "clients/"))]


def _cfg():
    # 200 reviews over 6 clients, 3 per round, 2 local steps: a central round is 2 x 3 = 6 steps.
    return load_config(
        CONFIG,
        tiny_overrides(
            **{"federation.rounds": 2, "data.max_test_samples": 100, "checkpoint.keep": 5}
        ),
    )


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / rundir.METRICS).read_text().splitlines()]


def _no_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def _spec(steps: int | None) -> TrainSpec:
    return TrainSpec(16, 2, steps, 1e-3, "adamw", 0.0, 1.0, True, "classification", 0)


def test_round_budget_is_local_steps_times_clients_per_round() -> None:
    assert central_spec(_spec(10), 4).steps == 40
    assert central_spec(_spec(10), 4).epochs == 2  # everything else is kept
    assert central_spec(_spec(None), 4) == _spec(None)  # epochs budget: local_epochs over the union


def test_union_rows_concatenates_clients_in_order() -> None:
    parts = [np.array([4, 1]), np.array([0]), np.array([3, 2, 5])]
    assert union_rows(parts).tolist() == [4, 1, 0, 3, 2, 5]


@pytest.fixture(scope="module")
def ray_run(ray_session, tmp_path_factory) -> Path:
    """One real run through the CLI path: start_run -> run_centralized -> Ray Train TorchTrainer."""
    return start_run(_cfg(), out=str(tmp_path_factory.mktemp("central") / "run"))


def _in_process(tmp_path: Path, resume_round: int | None, source: Path) -> tuple[Path, list[dict]]:
    """The worker loop run here (no Ray Train) on the same job, optionally resumed from `source`."""
    run = tmp_path / "in_process"
    if resume_round is None:
        run.mkdir()
        resume = None
    else:
        shutil.copytree(source, run)
        for later in (run / "checkpoints").glob("round_*"):
            if int(later.name.removeprefix("round_")) > resume_round:
                shutil.rmtree(later)
        rundir.truncate_metrics(run, resume_round)
        resume = load_checkpoint(run / "checkpoints" / f"round_{resume_round:05d}")
    cfg = _cfg()
    reported: list[dict] = []
    train_rounds(make_job(cfg, prepare(cfg), run, resume, t_start=0.0), reported.append)
    return run, reported


def test_run_directory_contract(ray_run: Path) -> None:
    run = ray_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "partition.json"):
        assert (run / name).is_file(), name
    assert (run / "ray_train").is_dir()  # Ray Train's storage_path stays inside the run directory
    records = _records(run)
    assert [r["round"] for r in records] == [1, 2]
    for r in records:
        assert ROUND_KEYS <= r.keys()
        assert all(r[k] == 0 for k in ZERO_KEYS)
        assert r["train/steps"] == 6 and r["train/samples"] == 200
        assert all(math.isfinite(r[k]) for k in ROUND_KEYS)
        assert 0.0 <= r["eval/accuracy"] <= 1.0
    assert records[1]["time/virtual_s"] > records[0]["time/virtual_s"] > 0
    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["algorithm"] == "centralized" and summary["rounds_completed"] == 2
    assert summary["comm_bytes_total"] == 0
    assert summary["metrics"]["accuracy"] == records[-1]["eval/accuracy"]
    assert 0 < summary["trainable_params"] < summary["total_params"]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["round_00001", "round_00002"]
    blob, meta = load_checkpoint(run / "checkpoints" / "round_00002")
    assert meta["round"] == 2 and len(blob) > 0


def test_same_seed_gives_identical_metrics_and_state(ray_run: Path, tmp_path: Path) -> None:
    # A second run of the same config and seed, in another process: Ray Train adds no randomness.
    run, reported = _in_process(tmp_path, None, ray_run)
    assert [r["round"] for r in reported] == [1, 2]
    a, b = _records(ray_run), _records(run)
    assert _no_time(a) == _no_time(b)
    assert a[0]["train/loss"] != a[1]["train/loss"]  # the model does change between rounds
    final = "checkpoints/round_00002"
    assert load_checkpoint(run / final)[0] == load_checkpoint(ray_run / final)[0]


def test_resume_from_a_checkpoint_repeats_the_lost_round_exactly(
    ray_run: Path, tmp_path: Path
) -> None:
    run, reported = _in_process(tmp_path, 1, ray_run)
    assert [r["round"] for r in reported] == [2]
    assert _no_time(_records(run)) == _no_time(_records(ray_run))
    final = "checkpoints/round_00002"
    assert load_checkpoint(run / final)[0] == load_checkpoint(ray_run / final)[0]


def test_the_central_trainer_takes_a_whole_gpu_under_auto_and_never_more_than_there_is() -> None:
    from actors.train_central import central_gpus
    from engine.clock import load_device_profile
    from engine.errors import ConfigError

    laptop = load_device_profile("laptop")
    cfg = _cfg()
    assert cfg.resources.client_num_gpus == "auto"
    assert central_gpus(cfg, laptop, 0.0) == 0.0  # a CPU-only cluster: the CPU
    assert central_gpus(cfg, laptop, 8.0) == 1.0  # one trainer: one whole GPU, no packing
    assert central_gpus(cfg, laptop, 0.5) == 0.0  # no whole GPU free: the CPU
    half = cfg.model_copy(
        update={"resources": cfg.resources.model_copy(update={"client_num_gpus": 0.5})}
    )
    assert central_gpus(half, laptop, 1.0) == 0.5  # an explicit share is taken as asked
    with pytest.raises(ConfigError) as err:
        central_gpus(half, laptop, 0.0)
    assert err.value.key == "resources.client_num_gpus"
    assert "asks for 0.5 GPUs but this Ray has 0" in err.value.message
