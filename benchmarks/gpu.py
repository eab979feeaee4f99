"""Client throughput on one GPU: workers per GPU x precision, with utilisation and peak memory.

    .venv/bin/python benchmarks/gpu.py                 (a GPU host with Ray: the quickstart experiment)
    .venv/bin/python benchmarks/gpu.py --in-process    (a GPU host without Ray: see below)
    .venv/bin/python benchmarks/gpu.py --smoke         (tiny random BERT, 2 rounds)
Options: --workers 1 2 4 8 --precisions fp32 bf16 --rounds 4 --set key=value --out benchmarks/out

For each (workers per GPU k, precision) the quickstart experiment (all-MiniLM-L6-v2 + LoRA, embedded
reviews) runs with clients_per_round = 4k, so every worker trains four clients a round:
- with Ray, one fedray run whose k client workers each ask for 1/k of GPU 0
  (`resources.client_num_gpus=1/k`, `resources.num_workers=k`), capped at that share of its memory;
- with --in-process (no Ray on the host), k `fedray run --in-process` processes side by side, each
  capped at 1/k of the GPU's memory: the same k processes sharing one GPU, without Ray's scheduling.
Clients per second = clients trained / the rounds' wall time (evaluation excluded). GPU utilisation
is nvidia-smi's, sampled every 0.2 s over the runs; peak memory is the largest GPU allocation a
worker measured (`memory/device_peak_bytes/*`). Prints a table and writes gpu.json.

On a host without CUDA it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, offline, run_experiment  # noqa: E402

offline()

from engine.poller import Poller  # noqa: E402

BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"
SMOKE = ["model.name=tiny-bert-random", "model.max_length=64", "data.max_train_samples=400",
         "data.max_test_samples=64", "train.local_steps=4", "train.batch_size=8"]  # fmt: skip
PEAK = "memory/device_peak_bytes/"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--in-process", action="store_true", help="k processes without Ray")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--smoke", action="store_true", help="tiny random BERT, 2 rounds")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = p.parse_args(argv)
    if min(args.workers) < 1 or args.rounds < 1:
        p.error("--workers and --rounds must be >= 1")
    return args


class Utilisation(Poller):
    """nvidia-smi's utilisation.gpu of GPU 0, sampled while the block runs."""

    def __init__(self) -> None:
        super().__init__(0.2)
        self.samples: list[float] = []

    def tick(self) -> None:
        cmd = [
            "nvidia-smi",
            "-i",
            "0",
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
        ]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True)
            self.samples.append(float(out.stdout.strip().splitlines()[0]))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass  # no nvidia-smi: utilisation stays unmeasured

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def overrides(args: argparse.Namespace, k: int, precision: str) -> list[str]:
    return [
        *(SMOKE if args.smoke else []),
        f"federation.rounds={2 if args.smoke else args.rounds}",
        f"federation.clients_per_round={4 * k}",
        f"federation.num_clients={max(10, 4 * k)}",
        f"eval.every={2 if args.smoke else args.rounds}",
        f"train.precision={precision}",
        "wandb.mode=disabled",
        *args.set,
    ]


def throughput(records: list[dict[str, Any]]) -> tuple[int, float]:
    """(clients trained, seconds spent in rounds without evaluation)."""
    clients = sum(int(r.get("clients/completed", 0)) for r in records)
    seconds = sum(r["time/round_wall_s"] - r.get("time/eval_wall_s", 0.0) for r in records)
    return clients, seconds


def peak(records: list[dict[str, Any]]) -> int | None:
    values = [int(v) for r in records for key, v in r.items() if key.startswith(PEAK)]
    return max(values) if values else None


def with_ray(args: argparse.Namespace, k: int, precision: str, work: Path) -> dict[str, Any]:
    extra = [f"resources.client_num_gpus={1 / k:.4f}", f"resources.num_workers={k}"]
    run = run_experiment(BASE_CONFIG, overrides(args, k, precision) + extra, work / "run")
    clients, seconds = throughput(run["records"])
    return {"clients": clients, "seconds": seconds, "peak_bytes": peak(run["records"])}


def in_process(args: argparse.Namespace, k: int, precision: str, work: Path) -> dict[str, Any]:
    env = dict(os.environ, FEDRAY_GPU_SHARE=f"{1 / k:.4f}")
    procs = []
    for i in range(k):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(work / f"run{i}"),
               *overrides(args, 1, precision), f"seed={i}"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
    t0 = time.perf_counter()
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"gpu.py: an in-process run failed (exit codes {codes})")
    records = [json.loads(x) for i in range(k) for x in _metrics(work / f"run{i}")]
    clients, _ = throughput(records)
    return {"clients": clients, "seconds": wall, "peak_bytes": peak(records)}


def _metrics(run_dir: Path) -> list[str]:
    return next(run_dir.rglob("metrics.jsonl")).read_text().splitlines()


def child(run_dir: str, sets: list[str]) -> None:
    """One in-process run capped at FEDRAY_GPU_SHARE of the GPU (a stand-in for a Ray worker)."""
    from actors.launch import start_run
    from engine.backend import LocalBackend
    from engine.config import apply_overrides, read_yaml, validate_config
    from engine.device import cap_gpu_memory

    cap_gpu_memory(float(os.environ["FEDRAY_GPU_SHARE"]))
    cfg = validate_config(apply_overrides(read_yaml(BASE_CONFIG), sets))
    start_run(cfg, out=run_dir, backend=LocalBackend())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2:])
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu.py: no CUDA device on this host; nothing to measure (run it on a GPU host)")
        return 0
    args = parse_args(argv)
    measure = in_process if args.in_process else with_ray
    rows = []
    for precision in args.precisions:
        for k in args.workers:
            with tempfile.TemporaryDirectory() as tmp, Utilisation() as util:
                got = measure(args, k, precision, Path(tmp))
            rows.append({"workers_per_gpu": k, "precision": precision, **got,
                         "clients_per_s": got["clients"] / got["seconds"],
                         "gpu_util_pct": util.mean()})  # fmt: skip
            print(f"  {k} worker(s), {precision}: {rows[-1]['clients_per_s']:.2f} clients/s",
                  file=sys.stderr)  # fmt: skip
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_bytes": torch.cuda.get_device_properties(0).total_memory,
        "mode": "in-process" if args.in_process else "ray",
        "smoke": args.smoke,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['gpu']} ({report['gpu_bytes'] / 2**30:.0f} GiB), {report['mode']}",
        "| workers/GPU | precision | clients/s | vs 1 worker | GPU util % | peak MiB/worker |",
        "|---|---|---|---|---|---|",
    ]
    base = {r["precision"]: r["clients_per_s"] for r in report["rows"] if r["workers_per_gpu"] == 1}
    for r in report["rows"]:
        ref = base.get(r["precision"])
        ratio = f"{r['clients_per_s'] / ref:.2f}x" if ref else "-"
        util = f"{r['gpu_util_pct']:.0f}" if r["gpu_util_pct"] is not None else "-"
        mem = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] else "-"
        lines.append(f"| {r['workers_per_gpu']} | {r['precision']} | {r['clients_per_s']:.2f} | "
                     f"{ratio} | {util} | {mem} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
