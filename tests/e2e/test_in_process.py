"""fedray run --in-process: no Ray, no DeepSpeed, no W&B imported; the same numbers as on Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from actors.launch import start_run
from engine.config import load_config
from fedray.cli import main
from tests.conftest import run_records, tiny_overrides, without_wall

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
HEAVY = ("ray", "deepspeed", "wandb", "matplotlib")
# Runs the CLI in a fresh interpreter and prints its exit code and the heavy modules it imported.
PROBE = f"""
import json, sys
import pytest

from fedray.cli import main
code = main(sys.argv[1:])
print(json.dumps({{"code": code, "loaded": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""


def _probe(args: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_in_process_run_imports_no_ray_and_matches_the_ray_run(ray_session, tmp_path) -> None:
    local = tmp_path / "local"
    probe = _probe(["run", QUICKSTART, *tiny_overrides(), "--in-process", "--out", str(local)])
    assert probe == {"code": 0, "loaded": []}
    on_ray = start_run(load_config(QUICKSTART, tiny_overrides()), out=str(tmp_path / "ray"))
    assert without_wall(run_records(local)) == without_wall(run_records(on_ray))
    summary = json.loads((local / "summary.json").read_text())
    assert summary["rounds_completed"] == 3


def test_the_centralized_baseline_runs_in_process_without_ray(tmp_path) -> None:
    out = tmp_path / "central"
    over = tiny_overrides(algorithm="centralized", **{"federation.rounds": 2})
    probe = _probe(["run", QUICKSTART, *over, "--in-process", "--out", str(out)])
    assert probe == {"code": 0, "loaded": []}
    assert [r["round"] for r in run_records(out)] == [1, 2]
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 2


def test_in_process_with_an_address_is_a_usage_error(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["run", QUICKSTART, *tiny_overrides(), "--in-process", "--address", "auto"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --in-process: runs without Ray; drop --address (or --in-process)"]
    assert not out.exists()


def _fedray(args: list[str], env: dict[str, str]) -> None:
    import os

    done = subprocess.run(
        [sys.executable, "-m", "fedray", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=900, env={**os.environ, **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.cuda
def test_sfprompts_split_client_and_body_on_the_gpu_match_the_cpu(tmp_path) -> None:
    """fp32 on CUDA vs CUDA hidden: the same round records to 1e-3 (kernels differ, not the math)."""
    pytest.importorskip("deepspeed")  # the in-process body runs on DeepSpeed
    config = str(ROOT / "configs" / "sfprompt" / "amazon_reviews.yaml")
    base = ["run", config, *tiny_overrides(**{"server.dtype": "fp32"}), "--in-process"]
    _fedray([*base, "--out", str(tmp_path / "cpu")], {"CUDA_VISIBLE_DEVICES": ""})
    _fedray([*base, "--out", str(tmp_path / "gpu")], {})
    cpu, gpu = run_records(tmp_path / "cpu"), run_records(tmp_path / "gpu")
    assert all(any(k.startswith("memory/device_peak_bytes/") for k in r) for r in gpu)
    for rc, rg in zip(cpu, gpu, strict=True):
        assert rg["eval/loss"] == pytest.approx(rc["eval/loss"], rel=1e-3)
        assert rg["comm/bytes_up"] == rc["comm/bytes_up"]  # the wire does not see the device


def test_an_in_process_sfprompt_run_needs_no_deepspeed(tmp_path) -> None:
    """The in-process body (ZeRO stage 0) is plain torch; the Ray run above it is DeepSpeed's
    (tests/e2e/test_sfprompt_run.py shows both give the same records)."""
    config = str(ROOT / "configs" / "sfprompt" / "amazon_reviews.yaml")
    out = tmp_path / "sf"
    probe = _probe(["run", config, *tiny_overrides(), "--in-process", "--out", str(out)])
    assert probe == {"code": 0, "loaded": []}
    assert len(run_records(out)) == 3
