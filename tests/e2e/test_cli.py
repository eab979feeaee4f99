"""The CLI's exit contract: bad input gives exit 2 and one line naming the key, and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedray.cli import main
from tests.conftest import tiny_overrides

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")

BAD = [
    (
        ["federation.clients_per_round=50"],
        "federation.clients_per_round: 50 > federation.num_clients",
    ),
    (["data.partition.alpha=0"], "data.partition.alpha"),
    (["data.partition.alpha=-1"], "data.partition.alpha"),
    (["method.name=nope"], "method.name"),
    (["train.lr=0"], "train.lr"),
    (["train.lr=-0.1"], "train.lr"),
    (["method.lr=0"], "method.lr"),
    (["method.r=0"], "method.r"),
    (["federation.rounds=abc"], "federation.rounds"),
    (["federation.typo=3"], "federation.typo: unknown key"),
    (["nosuchsection.x=1"], "nosuchsection: unknown key"),
    (["data.name=/no/such/file.csv"], "data.name"),
    (["data.text_key=body"], "data.text_key"),
    (["model.name=/no/such/model/dir"], "model.name"),
    (["resources.device_profile=toaster"], "resources.device_profile"),
    (["data.partition.kind=zipf"], "data.partition.kind"),
    (["federation.num_clients=100000"], "federation.num_clients"),
    (["notakeyvalue"], "notakeyvalue"),
    (["eval.split=validation"], "eval.split: validation needs rows to evaluate"),
    (["data.validation_fraction=0.9"], "data.validation_fraction"),
    (
        ["data.validation_fraction=0.5", "data.max_train_samples=8"],
        "data.validation_fraction: 4 held-out rows leave 4 for 6 clients",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD)
def test_bad_input_exits_2_with_one_line(overrides, expected, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["run", QUICKSTART, *tiny_overrides(), *overrides, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0]
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--seeds", "0"], "--seeds: give 1 to 1000 seeds (got 0)"),
        (["--seeds", "1000000000"], "--seeds: give 1 to 1000 seeds"),
        (["--resume", "x", "--seeds", "2"], "SWEEP: give a sweep file, or --resume"),
    ],
)
def test_bad_tune_seeds_exit_2_with_one_line(args, expected, tmp_path, capsys) -> None:
    sweep = (
        Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "fedpetuning_lora_rank_lr.yaml"
    )
    out = tmp_path / "sweep"
    assert main(["tune", str(sweep), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {expected}"), err
    assert not out.exists()


def test_missing_config_file(capsys) -> None:
    assert main(["run", "/no/such.yaml"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_malformed_yaml(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: [unclosed\n")
    assert main(["run", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_resume_of_a_non_run_directory(tmp_path, capsys) -> None:
    assert main(["resume", str(tmp_path)]) == 2
    assert "RUN_DIR" in capsys.readouterr().err


def test_non_empty_out_is_refused(tmp_path, capsys) -> None:
    (tmp_path / "x").write_text("keep me")
    assert main(["run", QUICKSTART, *tiny_overrides(), "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err
    assert (tmp_path / "x").read_text() == "keep me"


def test_subprocess_prints_no_traceback(tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedray", "run", QUICKSTART, "federation.clients_per_round=50"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: federation.clients_per_round: 50 > federation.num_clients (10); "
        "lower it or add clients"
    )
    assert not (tmp_path / "runs").exists()
