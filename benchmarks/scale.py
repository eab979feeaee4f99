"""Scale benchmark: round wall time and peak driver + actor memory, 10,000 vs 100 clients.

Run from the repository root (HF_HUB_OFFLINE, WANDB_MODE, RAY_AUTH_MODE are set if unset):

    .venv/bin/python benchmarks/scale.py            # 6-9 min on 2 busy cores (9 runs of 30-60 s)
    .venv/bin/python benchmarks/scale.py --smoke    # ~1 min: 100 vs 1,000 clients, 10 per round

tiny-vit-random + LoRA on fashion_mnist (12,000 images), IID, 50 clients per round, 2 local steps of
batch 1 (equal work per client), eval only after the last round. A (100 clients) and B (10,000) run
in one process on one local Ray, after a warm-up run, in the order A B B A A B B A; round 1 of each
run is left out. Memory is the peak summed PSS (psutil memory_full_info every 1 s; RSS every 0.2 s)
of the driver + ray::* worker processes; Ray's daemons are added in a separate column. A
tracemalloc probe of prepare() at 100 and 12,000 clients (the data limit) gives driver bytes per
client, extrapolated linearly to 24 GiB. Writes benchmarks/out/scale.json (--out); see
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import psutil
from harness import offline

from actors.launch import start_run
from engine import rundir
from engine.clock import load_device_profile
from engine.config import RunConfig, apply_overrides, validate_config
from engine.poller import Poller
from engine.prepare import prepare
from engine.rounds import RoundInputs, sample_clients, unavailable
from engine.runner import _partition_record

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.1  # the ceiling for both ratios
MACHINE_BYTES = 24 * 2**30  # the 24 GiB machine
DATA_ROWS = 12_000  # fashion_mnist train images: at most one client per image
WARMUP_ROUNDS = 1
MB = 2**20
PSS_EVERY = 5  # PSS every 5th sample (1 s), RSS every sample: the sampler shares the 2 cores
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # Ray daemons, not workers
POOL = "ray::ClientWorker"  # the process title of fedray's client actors
WORKER_BOOT = ("setup_worker.py", "default_worker.py")  # a worker before it renames itself


def make_config(num_clients: int, per_round: int, rounds: int, local_steps: int) -> RunConfig:
    """The benchmark workload at `num_clients` registered clients; everything else fixed."""
    overrides = {
        "name": f"scale-{num_clients}",
        "model.name": "tiny-vit-random",
        "method.name": "lora",
        "method.target_modules": "[q_proj, v_proj]",  # ViT attention (LoRA's default too)
        "data.name": "fashion_mnist",
        "data.partition.kind": "iid",
        "data.max_test_samples": 256,
        "federation.num_clients": num_clients,
        "federation.clients_per_round": per_round,
        "federation.rounds": rounds,
        "train.local_steps": local_steps,
        "train.batch_size": 1,  # equal work per client: 1 image a step at 1 or 120 images held
        "eval.every": rounds + 1,  # only after the last round (subtracted from its wall time)
        "checkpoint.every": rounds + 1,  # only after the last round, outside round_wall_s
        "checkpoint.keep": 1,
        "wandb.mode": "disabled",
        "resources.num_workers": "auto",
    }
    return validate_config(apply_overrides({}, [f"{k}={v}" for k, v in overrides.items()]))


class MemSampler(Poller):
    """Peak summed memory of this process and its descendants, sampled every `period_s`."""

    KEYS = ("pss", "rss", "pss_all", "rss_all", "driver_pss")

    def __init__(self, period_s: float = 0.2) -> None:
        super().__init__(period_s)
        self.peak = dict.fromkeys(self.KEYS, 0)
        self._kinds: dict[tuple[int, float], str] = {}
        self._procs: dict[int, psutil.Process] = {}
        self.samples, self.sample_s = 0, 0.0  # the sampler's own cost (it shares the CPU)
        self._lock = threading.Lock()

    def _kind(self, p: psutil.Process) -> str:
        key = (p.pid, p.create_time())
        if key in self._kinds:
            return self._kinds[key]
        args = p.cmdline()
        # Ray workers rename themselves ray::IDLE / ray::ClientWorker; its agents are ray:: too.
        name = " ".join(args).strip().split(" ", 1)[0] if args else ""
        if name.startswith("ray::"):  # final: only ray:: names are remembered
            self._kinds[key] = "system" if name in RAY_AGENTS else "worker"
            return self._kinds[key]
        # A worker before its rename runs setup_worker.py / default_worker.py (raylet's own
        # arguments name default_worker.py too); between raylet's fork and the exec it still
        # looks like raylet, so nothing else is remembered: it is looked at again next time.
        return "worker" if any(a.endswith(WORKER_BOOT) for a in args[1:3]) else "system"

    def tree(self) -> list[psutil.Process]:
        """This process and its descendants, walked down /proc/PID/task/TID/children (psutil's
        children(recursive=True) reads every process on the machine: ~20 ms on a busy one)."""
        pids, stack = [], [os.getpid()]
        while stack:
            pid = stack.pop()
            pids.append(pid)
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        stack += [int(c) for c in f.read().split()]
            except OSError:
                continue  # it (or a thread) has just exited
        known, self._procs = self._procs, {}  # forget exited processes (their pids get reused)
        for pid in pids:
            try:
                self._procs[pid] = known.get(pid) or psutil.Process(pid)
            except psutil.Error:
                continue
        return list(self._procs.values())

    def sample(self, full: bool = True) -> dict[str, int]:
        """Summed memory now; without `full` only RSS (PSS reads smaps: ~5 ms a process)."""
        me = os.getpid()
        out = dict.fromkeys(self.KEYS, 0)
        for p in self.tree():
            try:
                kind = "driver" if p.pid == me else self._kind(p)
                m = p.memory_full_info() if full else p.memory_info()
            except psutil.Error:
                continue  # the process ended between listing and reading
            mine = kind != "system"
            out["rss_all"] += m.rss
            out["rss"] += m.rss if mine else 0
            if full:
                out["pss_all"] += m.pss
                out["pss"] += m.pss if mine else 0
                out["driver_pss"] += m.pss if kind == "driver" else 0
        return out

    def reset(self) -> None:
        with self._lock:
            self.peak = dict.fromkeys(self.KEYS, 0)

    def tick(self) -> None:
        t0 = time.perf_counter()
        s = self.sample(full=self.samples % PSS_EVERY == 0)
        self.samples, self.sample_s = self.samples + 1, self.sample_s + time.perf_counter() - t0
        with self._lock:
            self.peak = {k: max(self.peak[k], s[k]) for k in self.KEYS}


def round_times(run_dir: Path) -> list[float]:
    """Per-round wall seconds from metrics.jsonl, the last round's eval time taken out."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append(rec["time/round_wall_s"] - rec.get("time/eval_wall_s", 0.0))
    return out


def wait_pool_gone(mem: MemSampler, timeout_s: float = 60.0) -> None:
    """Until the previous run's client actors have exited (ray.kill does not wait for them)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and any(title(p).startswith(POOL) for p in mem.tree()):
        time.sleep(0.2)


def title(p: psutil.Process) -> str:
    try:
        return (p.cmdline() or [""])[0]
    except psutil.Error:
        return ""  # it has just exited


def run_one(label: str, cfg: RunConfig, out_dir: Path, mem: MemSampler) -> dict[str, Any]:
    wait_pool_gone(mem)  # the previous run's workers are not this run's memory
    gc.collect()  # nor is its garbage
    before = mem.sample()
    load0 = os.getloadavg()[0]
    mem.reset()
    t0 = time.perf_counter()
    run_dir = start_run(cfg, out=str(out_dir))
    call_s = time.perf_counter() - t0
    peak = dict(mem.peak)
    rs = round_times(run_dir)
    measured = rs[WARMUP_ROUNDS:]
    row = {
        "config": label,
        "registered": cfg.federation.num_clients,
        "sampled": cfg.federation.clients_per_round,
        "round_s": rs,
        "mean_round_s": statistics.mean(measured),
        "median_round_s": statistics.median(measured),
        "call_s": call_s,
        "peak": peak,
        "before": before,
        "partition_json_bytes": (run_dir / "partition.json").stat().st_size,
        "loadavg_1m": [load0, os.getloadavg()[0]],
    }
    print(
        f"  {label} n={row['registered']}: rounds "
        + " ".join(f"{x:.2f}" for x in rs)
        + f" s; peak PSS {peak['pss'] / MB:.0f} MB (all {peak['pss_all'] / MB:.0f} MB); "
        f"call {call_s:.0f} s; load {load0:.1f}",
        flush=True,
    )
    return row


def order(repeats: int) -> list[str]:
    """ABBA ABBA ...: a linear drift in load or memory falls equally on A and B."""
    return [c for i in range(repeats) for c in (("A", "B") if i % 2 == 0 else ("B", "A"))]


def driver_bytes(cfg: RunConfig) -> dict[str, float]:
    """Driver-side cost of a config outside the rounds, as tracemalloc sees it.

    retained: what prepare() keeps (data arrays + per-client rows, histograms, profiles);
    record: the transient peak of the runner's partition.json record (built and written once).
    """
    gc.collect()
    t0 = time.perf_counter()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    prep = prepare(cfg)
    retained = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.reset_peak()
    mid = tracemalloc.get_traced_memory()[0]
    with tempfile.TemporaryDirectory() as tmp:
        # The runner's own code path (a private helper): the record of every client's part.
        rundir.write_json(Path(tmp) / rundir.PARTITION, _partition_record(prep))
    record = tracemalloc.get_traced_memory()[1] - mid
    tracemalloc.stop()
    row_bytes = (prep.train.images.nbytes + prep.train.labels.nbytes) / len(prep.train)
    return {
        "retained": retained,
        "record": record,
        "row_bytes": row_bytes,
        "traced_s": time.perf_counter() - t0,
    }


def bookkeeping_ms(num_clients: int, per_round: int, rounds: int = 200) -> float:
    """Driver ms per round of a FedAvg round's O(num_clients) steps (sampling, availability)."""
    prof = load_device_profile("laptop")
    inp = RoundInputs(
        num_clients=num_clients,
        clients_per_round=per_round,
        weighted=True,
        seed=0,
        spec=None,
        profile=prof,
        eval_batch_size=64,
        task="classification",
        profiles=[prof] * num_clients,  # as prepare() builds them
    )
    unavailable(sample_clients(num_clients, per_round, 0, 0), inp, 0)  # first-call costs
    t0 = time.perf_counter()
    for rnd in range(1, rounds + 1):
        unavailable(sample_clients(num_clients, per_round, 0, rnd), inp, rnd)
    return (time.perf_counter() - t0) / rounds * 1e3


def per_client_probe(lo: int, hi: int, per_round: int, steps: int) -> dict[str, Any]:
    """Driver bytes per registered client from prepare() at two client counts (no Ray)."""
    a = driver_bytes(make_config(lo, per_round, 1, steps))
    b = driver_bytes(make_config(hi, per_round, 1, steps))
    n = hi - lo
    retained = (b["retained"] - a["retained"]) / n
    record = (b["record"] - a["record"]) / n
    return {
        "clients": [lo, hi],
        "traced": {str(lo): a, str(hi): b},
        "retained_bytes_per_client": retained,
        "record_bytes_per_client": record,
        "bytes_per_client": retained + record,
        "row_bytes": b["row_bytes"],
        "round_bookkeeping_ms": {str(n): bookkeeping_ms(n, per_round) for n in (lo, hi)},
    }


def extrapolate(base_bytes: float, base_clients: int, per_client: float) -> int:
    """Clients at which base + per_client * (n - base_clients) reaches the machine's memory."""
    return int(base_clients + (MACHINE_BYTES - base_bytes) / per_client)


def summarise(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    mine = [r for r in rows if r["config"] == key]
    rounds = [x for r in mine for x in r["round_s"][WARMUP_ROUNDS:]]
    return {
        "registered": mine[0]["registered"],
        "sampled": mine[0]["sampled"],
        "runs": len(mine),
        "mean_round_s": statistics.mean(rounds),
        "median_round_s": statistics.median(rounds),
        "peak_pss_bytes": statistics.mean(r["peak"]["pss"] for r in mine),
        "peak_rss_bytes": statistics.mean(r["peak"]["rss"] for r in mine),
        "peak_pss_all_bytes": statistics.mean(r["peak"]["pss_all"] for r in mine),
        "peak_driver_pss_bytes": statistics.mean(r["peak"]["driver_pss"] for r in mine),
    }


def analyse(rows: list[dict[str, Any]], probe: dict[str, Any]) -> dict[str, Any]:
    a, b = summarise(rows, "A"), summarise(rows, "B")
    wall = b["mean_round_s"] / a["mean_round_s"]
    mem = b["peak_pss_bytes"] / a["peak_pss_bytes"]
    measured_slope = (b["peak_pss_bytes"] - a["peak_pss_bytes"]) / (
        b["registered"] - a["registered"]
    )
    per_client = probe["bytes_per_client"]
    pairs = [rows[i : i + 2] for i in range(0, len(rows) - 1, 2)]  # (A, B) or (B, A)
    by_pair = [
        next(r for r in p if r["config"] == "B")["mean_round_s"]
        / next(r for r in p if r["config"] == "A")["mean_round_s"]
        for p in pairs
    ]
    return {
        "ratio_round_wall_per_pair": by_pair,
        "A": a,
        "B": b,
        "ratio_round_wall_mean": wall,
        "ratio_round_wall_median": b["median_round_s"] / a["median_round_s"],
        "ratio_peak_pss": mem,
        "ratio_peak_rss": b["peak_rss_bytes"] / a["peak_rss_bytes"],
        "pass_round_wall": bool(wall <= TARGET),
        "pass_round_wall_median": bool(b["median_round_s"] / a["median_round_s"] <= TARGET),
        "pass_peak_memory": bool(mem <= TARGET),
        "per_client_bytes_traced": per_client,
        "per_client_bytes_measured_pss": measured_slope,
        "extrapolated_max_clients_24GiB": extrapolate(
            a["peak_pss_bytes"], a["registered"], per_client
        ),
        # If the data grew one row per client: that row lives in the driver and the object store.
        "extrapolated_max_clients_24GiB_data": extrapolate(
            a["peak_pss_bytes"], a["registered"], per_client + 2 * probe["row_bytes"]
        ),
        "data_limit_clients": DATA_ROWS,
    }


def print_report(rows: list[dict[str, Any]], an: dict[str, Any], probe: dict[str, Any]) -> None:
    print(
        "\n| config | registered | sampled | mean round wall s | median s | peak MB (PSS) "
        "| peak MB (RSS) | peak MB (PSS, incl. Ray daemons) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key in ("A", "B"):
        s = an[key]
        print(
            f"| {key} | {s['registered']:,} | {s['sampled']} | {s['mean_round_s']:.2f} "
            f"| {s['median_round_s']:.2f} | {s['peak_pss_bytes'] / MB:.0f} "
            f"| {s['peak_rss_bytes'] / MB:.0f} | {s['peak_pss_all_bytes'] / MB:.0f} |"
        )
    print(
        f"\n(MB = 2^20 bytes; driver + ray::* worker processes; mean over {an['A']['runs']} "
        f"runs each, order {' '.join(r['config'] for r in rows)}; round 1 of each run excluded)"
    )
    verdict = {True: "PASS", False: "FAIL"}
    pairs = " ".join(f"{x:.2f}" for x in an["ratio_round_wall_per_pair"])
    print(
        f"round wall B/A (target <= {TARGET}): mean {an['ratio_round_wall_mean']:.3f} "
        f"{verdict[an['pass_round_wall']]}, median {an['ratio_round_wall_median']:.3f} "
        f"{verdict[an['pass_round_wall_median']]}; per A/B pair of runs {pairs}"
    )
    print(
        f"peak memory B/A: {an['ratio_peak_pss']:.3f} PSS (RSS {an['ratio_peak_rss']:.3f}) "
        f"target <= {TARGET} {verdict[an['pass_peak_memory']]}"
    )
    lo, hi = probe["clients"]
    print(
        f"driver bytes per registered client (tracemalloc, {lo} vs {hi} clients): "
        f"{probe['retained_bytes_per_client']:.0f} kept by prepare() + "
        f"{probe['record_bytes_per_client']:.0f} transient partition.json record; "
        f"measured PSS slope B-A {an['per_client_bytes_measured_pss']:.0f} B/client (noise)"
    )
    ms = probe["round_bookkeeping_ms"]
    print(
        "driver O(num_clients) work per round (sampling + availability draw): "
        + ", ".join(f"{float(v):.3f} ms at {int(k):,}" for k, v in ms.items())
    )
    fixed, grow = an["extrapolated_max_clients_24GiB"], an["extrapolated_max_clients_24GiB_data"]
    print(
        "EXTRAPOLATION (linear from the 100-client peak, not measured): driver + actors reach "
        f"24 GiB at ~{fixed:,} registered clients on this 12,000-image data set, or at "
        f"~{grow:,} if the data grew one image per client ({probe['row_bytes']:.0f} B/row, "
        "x2: driver + object store)."
    )
    print(
        f"Data limit: {DATA_ROWS:,} clients (one train image each); largest count run: "
        f"{an['B']['registered']:,} (rounds), {hi:,} (prepare probe)."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6, help="rounds per run (round 1 is warm-up)")
    p.add_argument("--repeats", type=int, default=4, help="A,B pairs, run in ABBA order")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "scale.json")
    p.add_argument("--smoke", action="store_true", help="~1 min: 100 vs 1,000 clients, 2 rounds")
    return p.parse_args(argv)


def measure(plan: dict[str, int]) -> list[dict[str, Any]]:
    """The timed runs (ABBA ...) on one local Ray, after an optional unmeasured warm-up run."""
    from actors.cluster import init_ray

    per_round, rounds, steps = plan["per_round"], plan["rounds"], plan["steps"]
    cfgs = {k: make_config(plan[k], per_round, rounds, steps) for k in ("A", "B")}
    init_ray(None, None, False)  # one local Ray (all cores) that every start_run joins
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedray-scale-") as tmp, MemSampler() as mem:
        t = Path(tmp)
        if plan["warmup"]:  # lazy imports and Ray's worker pool, before anything is measured
            print("warm-up run (not measured)", flush=True)
            start_run(make_config(plan["A"], per_round, 1, steps), out=str(t / "warmup"))
        for i, key in enumerate(order(plan["repeats"])):
            rows.append(run_one(key, cfgs[key], t / f"{i}-{key}", mem))
    ms = mem.sample_s / max(mem.samples, 1) * 1e3
    print(
        f"memory sampler: {ms:.1f} ms CPU per sample (mean), RSS every {mem.period_s} s, "
        f"PSS every {PSS_EVERY * mem.period_s:g} s",
        flush=True,
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    offline()
    plan = {"A": 100, "B": 10_000, "per_round": 50, "rounds": args.rounds, "steps": 2}
    plan.update(repeats=args.repeats, warmup=1, probe=DATA_ROWS)
    if args.smoke:
        plan.update(B=1_000, per_round=10, rounds=2, repeats=1, warmup=0, probe=1_000)
    rows = measure(plan)
    print(f"tracemalloc probe: prepare() at {plan['A']} vs {plan['probe']} clients", flush=True)
    probe = per_client_probe(plan["A"], plan["probe"], plan["per_round"], plan["steps"])
    an = analyse(rows, probe)
    print_report(rows, an, probe)
    doc = {
        "args": {**vars(args), "out": str(args.out)},
        "workload": {
            "model": "tiny-vit-random",
            "method": "lora (q_proj, v_proj)",
            "data": "fashion_mnist",
            "partition": "iid",
            **plan,
            "batch_size": 1,
            "warmup_rounds_excluded": WARMUP_ROUNDS,
            "memory": "peak of summed PSS (psutil memory_full_info) of driver + ray::* workers, "
            "sampled every 0.2 s; *_all adds raylet (object store), GCS and agents",
            "cpus": os.cpu_count(),
        },
        "runs": rows,
        "probe": probe,
        "analysis": an,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
