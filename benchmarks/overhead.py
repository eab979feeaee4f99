"""Per-round overhead of fedray vs a plain single-process loop and an ideal bare-process reference."""

# Run: .venv/bin/python benchmarks/overhead.py [--rounds 3] [--model tiny-bert-random] [--out PATH]

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from harness import offline

from actors.launch import make_backend, start_run
from engine.aggregate import fedavg, fedavg_weights
from engine.checkpoint import load_checkpoint
from engine.client import ClientRuntime, ClientTask, WorkerSpec, worker_spec
from engine.config import RunConfig, load_config
from engine.ledger import deserialize_state, serialize_state
from engine.methods import load_trainable_state, trainable_state
from engine.poller import Poller
from engine.prepare import Prepared, prepare
from engine.rounds import TRAINING_STREAM, sample_clients
from engine.train import derive_seed, local_train

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
WARMUP_ROUNDS = 1  # round 1 (lazy init, allocator and cache warm-up) is excluded from the ratios
TARGET_ROUND_RATIO = 1.05  # the targets
TARGET_STARTUP_S = 10.0
State = dict[str, np.ndarray]


def make_config(model: str, rounds: int, per_round: int, local_steps: int, cores: int) -> RunConfig:
    """The quickstart config at benchmark scale; eval and W&B kept out of the way."""
    total = rounds + WARMUP_ROUNDS
    overrides = [
        f"model.name={model}",
        "federation.num_clients=40",
        f"federation.clients_per_round={per_round}",
        f"federation.rounds={total}",
        f"train.local_steps={local_steps}",
        "train.batch_size=16",
        f"eval.every={total + 1}",  # still evaluates after the last round: subtracted below
        "data.max_test_samples=128",  # the final eval is not what we measure: keep it short
        "checkpoint.every=1",  # writes happen outside time/round_wall_s; round 1 is compared
        f"checkpoint.keep={total}",
        "wandb.mode=disabled",
        f"ray.num_cpus={cores}",
        "resources.num_workers=auto",
    ]
    return load_config(QUICKSTART, overrides)


def round_tasks(cfg: RunConfig, prep: Prepared, rnd: int) -> list[ClientTask]:
    """The clients, rows and seeds of round `rnd`, exactly as engine.rounds builds them."""
    fed = cfg.federation
    ids = sample_clients(fed.num_clients, fed.clients_per_round, cfg.seed, rnd)
    return [
        ClientTask(
            rnd,
            int(c),
            prep.parts[c],
            derive_seed(cfg.seed, rnd, int(c), TRAINING_STREAM),
            prep.train_spec,
        )
        for c in ids
    ]


def average(results: list[tuple[int, int, State]], weighted: bool) -> State:
    """FedAvg of (client id, num samples, state) in client-id order, as fedray aggregates."""
    results = sorted(results, key=lambda r: r[0])
    weights = fedavg_weights([n for _, n, _ in results], weighted)
    return fedavg([s for _, _, s in results], weights)


class RssSampler(Poller):
    """Peak summed RSS of this process and all its descendants, sampled every `period_s`."""

    def __init__(self, period_s: float = 0.25) -> None:
        super().__init__(period_s)
        self.peak = 0

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass  # the process ended between listing and reading
        return total

    def tick(self) -> None:
        self.peak = max(self.peak, self._sample())


# ---------------------------------------------------------------- 1. fedray (start_run on Ray)


class _FirstDispatchClock:
    """fedray's own RayBackend (via make_backend), noting when the first round dispatches."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.inner, self.first_dispatch = cfg, None, None

    def start(self, spec: WorkerSpec, train, test, link: object = None) -> None:
        self.inner = make_backend(self.cfg)  # inside the timed call, as the runner's own would be
        self.inner.start(spec, train, test, link=link)

    def run_clients(self, tasks, global_blob, on_result):
        if self.first_dispatch is None:
            self.first_dispatch = time.perf_counter()
        return self.inner.run_clients(tasks, global_blob, on_result)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run_fedray(cfg: RunConfig) -> dict[str, Any]:
    import ray

    with tempfile.TemporaryDirectory() as tmp, RssSampler() as rss:
        clock = _FirstDispatchClock(cfg)
        t0 = time.perf_counter()
        run_dir = start_run(cfg, out=tmp, backend=clock)
        call_s = time.perf_counter() - t0
        records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run_dir / "summary.json").read_text())
        ckpts = sorted((run_dir / "checkpoints").glob("round_*"))
        states = [deserialize_state(load_checkpoint(ckpts[i])[0]) for i in (0, -1)]
        workers = clock.inner.num_workers
        ray.shutdown()  # the runner leaves Ray up; the next variants need the cores
    # The last round also evaluated the global model: its eval time is not round overhead.
    rounds = [r["time/round_wall_s"] - r.get("time/eval_wall_s", 0.0) for r in records]
    return {
        "workers": workers,
        "startup_s": clock.first_dispatch - t0,
        "summary_startup_s": summary["startup_s"],
        "call_s": call_s,
        "round_s": rounds,
        "peak_rss_bytes": rss.peak,
        "states": states,
    }


# ---------------------------------------------------------------- 2. plain loop (one process)


def run_plain(cfg: RunConfig, cores: int) -> dict[str, Any]:
    with RssSampler() as rss:
        t0 = time.perf_counter()
        prep = prepare(cfg)
        spec = replace(worker_spec(cfg, prep), torch_threads=cores)
        rt = ClientRuntime(spec, prep.train, prep.test)  # sets torch threads to `cores`
        blob = rt.initial_state()
        startup_s = time.perf_counter() - t0
        rounds, states = [], []
        for rnd in range(1, cfg.federation.rounds + 1):
            t = time.perf_counter()
            res = [rt.train_client(task, blob) for task in round_tasks(cfg, prep, rnd)]
            ups = [(r.client_id, r.train.num_samples, deserialize_state(r.blob)) for r in res]
            state = average(ups, cfg.federation.aggregation == "weighted")
            blob = serialize_state(state)
            rounds.append(time.perf_counter() - t)
            states.append(state)
        call_s = time.perf_counter() - t0
        del rt
        gc.collect()
    return {
        "workers": 1,
        "threads": cores,
        "startup_s": startup_s,
        "call_s": call_s,
        "round_s": rounds,
        "peak_rss_bytes": rss.peak,
        "states": [states[0], states[-1]],
    }


# ---------------------------------------------------------------- 3. ideal parallel reference


def _ideal_worker(conn, spec: WorkerSpec, train, test) -> None:
    """A bare process: build the model once, then train whatever client lists arrive."""
    rt = ClientRuntime(spec, train, test)  # the same model build as a fedray worker, 1 thread
    conn.send(trainable_state(rt.model))
    while (msg := conn.recv()) is not None:
        global_state, tasks = msg
        out = []
        for task in tasks:
            load_trainable_state(rt.model, global_state)
            res = local_train(rt.model, rt.train_data, task.rows, task.spec, task.seed, rt.meter)
            out.append((task.client_id, res.num_samples, trainable_state(rt.model)))
        conn.send(out)


def _spawn_workers(n: int, spec: WorkerSpec, prep: Prepared) -> tuple[list, list]:
    ctx = mp.get_context("spawn")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the children, as Ray workers get it
    procs, conns = [], []
    try:
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_ideal_worker, args=(child, spec, prep.train, prep.test))
            p.start()
            procs.append(p)
            conns.append(parent)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return procs, conns


def _ideal_round(conns: list, state: State, tasks: list[ClientTask], weighted: bool) -> State:
    for conn, share in zip(conns, np.array_split(np.arange(len(tasks)), len(conns)), strict=True):
        conn.send((state, [tasks[i] for i in share]))  # static split of the sorted client list
    return average([r for conn in conns for r in conn.recv()], weighted)


def run_ideal(cfg: RunConfig, cores: int) -> dict[str, Any]:
    with RssSampler() as rss:
        t0 = time.perf_counter()
        prep = prepare(cfg)
        spec = replace(worker_spec(cfg, prep), torch_threads=1)
        procs, conns = _spawn_workers(cores, spec, prep)
        state = [c.recv() for c in conns][0]
        startup_s = time.perf_counter() - t0
        rounds, states = [], []
        weighted = cfg.federation.aggregation == "weighted"
        for rnd in range(1, cfg.federation.rounds + 1):
            tasks = round_tasks(cfg, prep, rnd)
            t = time.perf_counter()
            state = _ideal_round(conns, state, tasks, weighted)
            rounds.append(time.perf_counter() - t)
            states.append(state)
        call_s = time.perf_counter() - t0
        for c, p in zip(conns, procs, strict=True):
            c.send(None)
            p.join(timeout=30)
    return {
        "workers": cores,
        "startup_s": startup_s,
        "call_s": call_s,
        "round_s": rounds,
        "peak_rss_bytes": rss.peak,
        "states": [states[0], states[-1]],
    }


# ---------------------------------------------------------------- report


def max_abs_diff(a: State, b: State) -> float:
    if sorted(a) != sorted(b):
        return float("inf")
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


def ratios(num: list[float], den: list[float]) -> list[float]:
    return [n / d for n, d in zip(num, den, strict=True)]


def analyse(res: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ratios against the ideal reference (warm-up rounds excluded), targets and state agreement."""
    ideal = res["ideal"]
    out: dict[str, Any] = {}
    for name in ("fedray", "plain"):
        r = res[name]
        per_round = ratios(r["round_s"][WARMUP_ROUNDS:], ideal["round_s"][WARMUP_ROUNDS:])
        out[f"{name}/ideal"] = {
            "per_round": per_round,
            "median": statistics.median(per_round),
            "measured_rounds": sum(r["round_s"][WARMUP_ROUNDS:])
            / sum(ideal["round_s"][WARMUP_ROUNDS:]),
            "whole_call": r["call_s"] / ideal["call_s"],
        }
        out[f"{name}-ideal max|diff|"] = {
            "round_1": max_abs_diff(r["states"][0], ideal["states"][0]),
            "final": max_abs_diff(r["states"][1], ideal["states"][1]),
        }
    med, start = out["fedray/ideal"]["median"], res["fedray"]["startup_s"]
    out["targets"] = {
        "fedray_round_median_le_1.05x_ideal": bool(med <= TARGET_ROUND_RATIO),
        "fedray_startup_lt_10s": bool(start < TARGET_STARTUP_S),
    }
    return out


def print_report(args, res: dict[str, dict[str, Any]], an: dict[str, Any]) -> None:
    n = len(res["ideal"]["round_s"])
    heads = " ".join(
        f"{'r' + str(i + 1) + ('*' if i < WARMUP_ROUNDS else ''):>7}" for i in range(n)
    )
    print(
        f"\nfedray overhead: {args.model}, {args.clients_per_round} clients/round, "
        f"{args.local_steps} local steps x batch 16, {args.cores} cores (* = warm-up, excluded)"
    )
    print(
        f"{'variant':<8} {'procs':>5} {'startup_s':>9} {'call_s':>7} {heads} {'median':>7}"
        f" {'peakRSS_GiB':>11}"
    )
    for name, r in res.items():
        rs = r["round_s"]
        cells = " ".join(f"{x:7.2f}" for x in rs)
        med = statistics.median(rs[WARMUP_ROUNDS:])
        print(
            f"{name:<8} {r['workers']:>5} {r['startup_s']:9.2f} {r['call_s']:7.1f} {cells}"
            f" {med:7.2f} {r['peak_rss_bytes'] / 2**30:11.2f}"
        )
    print(
        f"(fedray startup = call -> first dispatch; its summary.json startup_s "
        f"[Ray + workers ready] = {res['fedray']['summary_startup_s']:.2f})"
    )
    loads = ", ".join(
        f"{k} {r['loadavg_1m_before']:.1f}->{r['loadavg_1m_after']:.1f}" for k, r in res.items()
    )
    print(f"1-min load average before->after each variant ({args.cores} cores): {loads}")
    for name in ("fedray", "plain"):
        a = an[f"{name}/ideal"]
        per = " ".join(f"{x:.3f}" for x in a["per_round"])
        print(
            f"{name}/ideal per round: {per}; median {a['median']:.3f}; "
            f"measured rounds {a['measured_rounds']:.3f}; whole call {a['whole_call']:.3f}"
        )
        d = an[f"{name}-ideal max|diff|"]
        print(
            f"{name} vs ideal state max|diff|: round 1 {d['round_1']:.3g}, final {d['final']:.3g}"
        )
    t = an["targets"]
    med = an["fedray/ideal"]["median"]
    print(
        f"target fedray per-round <= {TARGET_ROUND_RATIO}x ideal: {med:.3f}x "
        f"{'PASS' if t['fedray_round_median_le_1.05x_ideal'] else 'FAIL'}"
    )
    print(
        f"target fedray start-up < {TARGET_STARTUP_S:g} s: {res['fedray']['startup_s']:.2f} s "
        f"{'PASS' if t['fedray_startup_lt_10s'] else 'FAIL'}"
    )


def write_json(path: Path, args, res: dict[str, dict[str, Any]], an: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: {f: v for f, v in r.items() if f != "states"} for k, r in res.items()}
    doc = {
        "args": {**vars(args), "out": str(args.out)},
        "warmup_rounds": WARMUP_ROUNDS,
        "variants": plain,
        "analysis": an,
    }
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(f"wrote {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (after 1 warm-up round)")
    p.add_argument("--clients-per-round", type=int, default=20)
    p.add_argument("--local-steps", type=int, default=2)
    p.add_argument("--model", default="all-minilm-l6-v2", help="or tiny-bert-random (smoke run)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "overhead.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    offline()
    cfg = make_config(args.model, args.rounds, args.clients_per_round, args.local_steps, args.cores)
    res: dict[str, dict[str, Any]] = {}
    for name, fn in (
        ("fedray", lambda: run_fedray(cfg)),
        ("ideal", lambda: run_ideal(cfg, args.cores)),
        ("plain", lambda: run_plain(cfg, args.cores)),
    ):
        print(f"== {name}", flush=True)
        load = os.getloadavg()[0]  # the CPU may be shared: record how busy it was
        res[name] = {**fn(), "loadavg_1m_before": load, "loadavg_1m_after": os.getloadavg()[0]}
    res = {k: res[k] for k in ("fedray", "plain", "ideal")}
    an = analyse(res)
    print_report(args, res, an)
    write_json(args.out, args, res, an)


if __name__ == "__main__":
    main()
