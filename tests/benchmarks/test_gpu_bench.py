"""benchmarks/gpu.py: its CPU answer and the arithmetic of its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU answer")
def test_on_a_cpu_host_it_says_so_in_one_line_and_exits_0(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == [
        "gpu.py: no CUDA device on this host; nothing to measure (run it on a GPU host)"
    ]
    assert not (tmp_path / "gpu.json").exists()  # nothing measured, nothing written


def test_throughput_counts_clients_over_round_time_without_evaluation() -> None:
    records = [
        {"clients/completed": 4, "time/round_wall_s": 2.0},
        {"clients/completed": 4, "time/round_wall_s": 3.5, "time/eval_wall_s": 1.5},
        {"time/round_wall_s": 1.0},  # a round where every client was unavailable
    ]
    assert gpu.throughput(records) == (8, 5.0)
    assert (
        gpu.peak([{"memory/device_peak_bytes/laptop": 3}, {"memory/device_peak_bytes/x": 7}]) == 7
    )
    assert gpu.peak(records) is None  # CPU workers measure no GPU peak


def test_the_table_compares_each_precision_with_its_one_worker_row() -> None:
    rows = [
        {"workers_per_gpu": 1, "precision": "fp32", "clients_per_s": 2.0, "gpu_util_pct": 30.0,
         "peak_bytes": 512 * 2**20},
        {"workers_per_gpu": 4, "precision": "fp32", "clients_per_s": 5.0, "gpu_util_pct": None,
         "peak_bytes": None},
    ]  # fmt: skip
    text = gpu.table({"gpu": "G", "gpu_bytes": 80 * 2**30, "mode": "ray", "rows": rows})
    assert "| 1 | fp32 | 2.00 | 1.00x | 30 | 512 |" in text
    assert "| 4 | fp32 | 5.00 | 2.50x | - | - |" in text
