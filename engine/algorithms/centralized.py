"""The centralized baseline: the same model and method trained on the union of the clients' data.

Budget. One round trains on the union of every client's rows (`prep.parts` concatenated):
- `train.local_steps` set: `local_steps * federation.clients_per_round` optimizer steps, the steps a
  federated round takes across its sampled clients, so both spend the same number of gradient steps;
- otherwise: `train.local_epochs` passes over the union (one epoch by default), so one round sees
  every training row once, as one federated round with every client sampled would.
Each round restarts the optimizer from the current trainable state, exactly like a federated client
does: the run's state after round r is its trainable parameters alone, so checkpoints are small and
`fedray resume` continues exactly. Round r's batches and dropout come from
`derive_seed(seed, r, CENTRAL_STREAM)`; the model (and method) initialisation is the federated one.

Where it runs. `run_centralized` hands a `CentralJob` of plain values to Ray Train
(`actors.train_central`, one `TorchTrainer` worker by default). The worker runs `train_rounds`:
it builds the model through `ClientRuntime` (the federated setup, unchanged), trains round by round,
evaluates with `evaluate_sets` (as the federated path does), and writes each round's record to metrics.jsonl and
its trainable state to checkpoints/ itself, as the round ends, then `ray.train.report`s the record.
Why the worker writes: records are on disk the moment a round ends (live progress, a crash leaves
the run resumable), with no dependence on Ray Train V2 returning metrics (`Result.metrics` is None
unless a checkpoint is reported). It needs the run directory visible from the worker's node, which
a local Ray gives and which Ray Train already requires of its `storage_path` (kept inside the run
directory, `ray_train/`) on a multi-node cluster. The driver then writes summary.json and the table.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine import rundir
from engine.algorithms.base import Algorithm
from engine.checkpoint import latest_good_checkpoint, save_checkpoint
from engine.client import ClientRuntime, ClientTask, WorkerSpec, worker_spec
from engine.clock import DeviceProfile, client_time_s
from engine.data.batching import Encoded
from engine.errors import FedRayRuntimeError
from engine.evalsets import EvalSets, evaluate_sets
from engine.ledger import Ledger
from engine.summary import best_of, build_summary, print_round, print_table
from engine.tracking import Tracker
from engine.train import TrainSpec, derive_seed

CENTRAL_STREAM = 3  # seed stream of centralized training (fedavg uses 1 and 2)
CENTRAL_CLIENT = -1  # the client id of the single central trainer in ClientTask
RAY_TRAIN_DIR = "ray_train"

# Keys of a federated round record that have no meaning without clients: always zero here.
ZERO_KEYS = (
    "comm/bytes_up",
    "comm/bytes_down",
    "comm/bytes_total_cum",
    "clients/sampled",
    "clients/completed",
    "clients/failed",
    "clients/dropped",
)


def union_rows(parts: list[np.ndarray]) -> np.ndarray:
    """Every client's rows in one array (client 0's rows first)."""
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])


def central_spec(spec: TrainSpec, clients_per_round: int) -> TrainSpec:
    """A round's budget: local_steps x clients_per_round steps, or local_epochs over the union."""
    if spec.steps is None:
        return spec
    return dataclasses.replace(spec, steps=spec.steps * clients_per_round)


@dataclass(frozen=True)
class CentralJob:
    """Plain values the Ray Train worker needs to run rounds first..rounds."""

    spec: WorkerSpec
    train: Encoded
    evals: EvalSets  # the test split (and the validation rows under eval.select: validation)
    rows: np.ndarray  # row indices of the union of clients' data
    train_spec: TrainSpec  # per round, from central_spec
    profile: DeviceProfile
    seed: int
    first_round: int
    rounds: int
    eval_every: int
    eval_batch_size: int
    checkpoint_every: int
    checkpoint_keep: int
    run_dir: str
    start_blob: bytes | None = None  # trainable state after round first_round - 1 (resume)
    wall0: float = 0.0  # wall and virtual seconds already spent before this attempt (resume)
    virtual0: float = 0.0
    t_start: float = 0.0  # time.time() when the driver started this attempt


def evaluate_runtime(runtime: ClientRuntime, version: int, blob: bytes, job: CentralJob) -> dict:
    """Eval metrics of `blob`, with the batches and sums the federated path uses."""
    return evaluate_sets(
        job.evals,
        job.eval_batch_size,
        runtime.spec.task,
        lambda batches: runtime.evaluate(version, blob, batches),
    )


def central_round(
    runtime: ClientRuntime, rnd: int, blob: bytes, job: CentralJob
) -> tuple[bytes, dict]:
    """Train one round on the union from state `blob`; returns the new state and the round record."""
    task = ClientTask(
        round=rnd,
        client_id=CENTRAL_CLIENT,
        rows=job.rows,
        seed=derive_seed(job.seed, rnd, CENTRAL_STREAM),
        spec=job.train_spec,
    )
    res = runtime.train_client(task, blob)
    # Virtual time: the round's compute on one device of the profile; nothing is transmitted.
    t = client_time_s(job.profile, flops=res.train.flops, bytes_down=0, bytes_up=0, messages=0)
    record: dict[str, Any] = {"round": rnd, **dict.fromkeys(ZERO_KEYS, 0)}
    record.update(
        {
            "time/round_virtual_s": t["total_s"],
            "train/loss": res.train.loss,
            "train/steps": res.train.steps,
            "train/samples": res.train.num_samples,
            "train/flops": res.train.flops,
            "train/peak_memory_bytes": res.peak_memory_bytes,
        }
    )
    return res.blob, record


def train_rounds(job: CentralJob, report: Callable[[dict], None]) -> None:
    """The worker's loop: every round trains, maybe evaluates, writes its record and checkpoint."""
    run_dir = Path(job.run_dir)
    if not run_dir.is_dir():
        raise FedRayRuntimeError(
            f"run directory {run_dir} is not visible from the Ray Train worker's node; "
            "put it on a filesystem every node shares (as Ray Train's storage_path must be)"
        )
    runtime = ClientRuntime(job.spec, job.train, job.evals.data)
    startup_s = time.time() - job.t_start  # Ray + Ray Train start and the model build
    blob = job.start_blob if job.start_blob is not None else runtime.initial_state()
    virtual = job.virtual0
    for rnd in range(job.first_round, job.rounds + 1):
        t0 = time.perf_counter()
        blob, record = central_round(runtime, rnd, blob, job)
        if rnd % job.eval_every == 0 or rnd == job.rounds:
            record.update(evaluate_runtime(runtime, rnd, blob, job))
        virtual += record["time/round_virtual_s"]
        record["time/virtual_s"] = virtual
        record["time/round_wall_s"] = time.perf_counter() - t0
        record["time/wall_s"] = job.wall0 + time.time() - job.t_start
        rundir.append_metrics(run_dir, record)
        print_round(record)
        if rnd % job.checkpoint_every == 0 or rnd == job.rounds:
            meta = {
                "ledger": Ledger().state_dict(),
                "wall_s": record["time/wall_s"],
                "virtual_s": virtual,
                "info": runtime.info(),
                "startup_s": startup_s,
            }
            save_checkpoint(run_dir / rundir.CHECKPOINTS, rnd, blob, meta, job.checkpoint_keep)
        report(record)


def make_job(
    cfg, prep, run_dir: Path, resume: tuple[bytes, dict] | None, t_start: float
) -> CentralJob:
    """Plain job values from the config; `resume` is (state blob, checkpoint meta) or None."""

    blob, meta = resume if resume is not None else (None, {})
    return CentralJob(
        spec=worker_spec(cfg, prep),
        train=prep.train,
        evals=prep.evals,
        rows=union_rows(prep.parts),
        train_spec=central_spec(prep.train_spec, cfg.federation.clients_per_round),
        profile=prep.profile,
        seed=cfg.seed,
        first_round=int(meta.get("round", 0)) + 1,
        rounds=cfg.federation.rounds,
        eval_every=cfg.eval.every,
        eval_batch_size=cfg.eval.batch_size,
        checkpoint_every=cfg.checkpoint.every,
        checkpoint_keep=cfg.checkpoint.keep,
        run_dir=str(run_dir.resolve()),
        start_blob=blob,
        wall0=float(meta.get("wall_s", 0.0)),
        virtual0=float(meta.get("virtual_s", 0.0)),
        t_start=t_start,
    )


def run_centralized(
    cfg,
    prep,
    run_dir: Path,
    fit: Callable[[CentralJob], None],
    resume: tuple[bytes, dict] | None = None,
) -> Path:
    """Run (or resume from `resume` = (state blob, checkpoint meta)) the centralized baseline: `fit`
    runs the job's rounds (`fit_here`, or on Ray Train: actors/train_central.py); then the federated
    run-dir contract is written from the job's checkpoints."""
    t_start = time.time()
    job = make_job(cfg, prep, run_dir, resume, t_start)
    if job.first_round <= job.rounds:
        fit(job)
    history = rundir.read_metrics(run_dir)
    found = latest_good_checkpoint(run_dir / rundir.CHECKPOINTS)
    if found is None:
        raise FedRayRuntimeError(f"centralized training wrote no checkpoint in {run_dir}")
    _, blob, meta = found
    summary = build_summary(
        history, Ledger(), meta["info"], cfg, meta["startup_s"], meta["virtual_s"], cfg.method.name
    )
    rundir.write_json(run_dir / rundir.SUMMARY, summary)
    tracker = Tracker(cfg, run_dir)
    for record in history:
        tracker.log(record)
    tracker.finish(summary, blob)
    print_table(cfg, summary, best_of(history), run_dir)
    return run_dir


def fit_here(job: CentralJob) -> None:
    """The job's rounds in this process: the loop Ray Train's worker runs."""
    train_rounds(job, lambda record: None)


# The baseline: the union of the clients' data in one job, the same budget, no rounds to aggregate.
CENTRALIZED = Algorithm(name="centralized", federated=False, partial_work=False)
