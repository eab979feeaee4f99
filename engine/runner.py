"""Drive a run: run directory, rounds, checkpoints, summary; and resume. Where the work happens is a
`Launch`: this process (`InProcess`, below) or Ray (actors/launch.py, which also sizes the worker pool)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from engine import rundir
from engine.algorithms import NoServer, get_algorithm
from engine.algorithms.centralized import fit_here, run_centralized
from engine.backend import Backend, LocalBackend
from engine.checkpoint import (
    add_tensors,
    latest_good_checkpoint,
    list_checkpoints,
    save_checkpoint,
    take_prefixed,
)
from engine.client import worker_spec
from engine.config import RunConfig, dump_config, load_config
from engine.errors import ConfigError
from engine.ledger import Ledger, deserialize_state
from engine.prepare import Prepared, prepare
from engine.rounds import RoundInputs, evaluate_global, run_round
from engine.strategies import SLOT_PREFIX, ControlStore, ServerOptimizer, resolve
from engine.summary import best_of, build_summary, print_round, print_table
from engine.tracking import Tracker

OnRound = Callable[[dict[str, Any]], None]


class Launch(Protocol):
    """Where a run's work happens: on Ray (actors/launch.py: RayLaunch) or in this process."""

    def backend(self, cfg: RunConfig, prep: Prepared) -> Backend: ...  # the client workers

    def check_central(self, cfg: RunConfig, prep: Prepared) -> None: ...  # its resources fit

    def fit_central(self, cfg: RunConfig, prep: Prepared, run_dir: Path) -> Callable: ...


class InProcess:
    """Everything in this process: the given backend (else a LocalBackend), the centralized job's
    rounds here too; no Ray is imported."""

    def __init__(self, backend: Backend | None = None) -> None:
        self._backend = backend

    def backend(self, cfg: RunConfig, prep: Prepared) -> Backend:
        return self._backend or LocalBackend()

    def check_central(self, cfg: RunConfig, prep: Prepared) -> None:
        return None

    def fit_central(self, cfg: RunConfig, prep: Prepared, run_dir: Path) -> Callable:
        return fit_here


def _partition_record(prep: Prepared) -> dict[str, Any]:
    return {
        "num_clients": len(prep.parts),
        "label_names": prep.splits.label_names,
        "clients": [
            {"client": i, "size": int(len(p)), "label_histogram": h, "device": d.name}
            for i, (p, h, d) in enumerate(
                zip(prep.parts, prep.histograms, prep.profiles, strict=True)
            )
        ],
    }


def start_run(
    cfg: RunConfig,
    out: str | None = None,
    backend: Backend | None = None,
    on_round: OnRound | None = None,
    launch: Launch | None = None,
) -> Path:
    """Validate inputs, create the run directory and run every round, where `launch` says (default:
    in this process, on `backend` or a LocalBackend; Ray: actors.launch.start_run).

    `on_round(record)` sees each round's record once it is written (e.g. a Tune trial reports it).
    """
    launch = launch or InProcess(backend)
    prep = prepare(cfg)  # every user error is raised here, before anything is written
    run_dir = rundir.new_run_dir(out, cfg.name)
    # So is a cluster too small for the run (before the run directory exists).
    backend = None
    if get_algorithm(cfg.algorithm).federated:
        backend = launch.backend(cfg, prep)
    else:  # the centralized job's request must fit the cluster too
        launch.check_central(cfg, prep)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write(run_dir / rundir.CONFIG, dump_config(cfg))
        rundir.write_json(run_dir / rundir.PARTITION, _partition_record(prep))
    except BaseException:
        if backend is not None:
            backend.shutdown()
        raise
    try:
        return _execute(cfg, prep, run_dir, launch, backend, None, on_round)
    except ConfigError:  # found at start (e.g. a measured client step fits no GPU)
        if not (run_dir / rundir.METRICS).exists():  # no round ran: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def resume_run(
    run_dir: str | Path,
    backend: Backend | None = None,
    on_round: OnRound | None = None,
    launch: Launch | None = None,
) -> Path:
    """Continue a run from its newest verified checkpoint (where `launch` says, as start_run); the
    result equals an uninterrupted run."""
    launch = launch or InProcess(backend)
    path = Path(run_dir)
    if not (path / rundir.CONFIG).is_file():
        raise ConfigError(
            "RUN_DIR", f"{path} holds no {rundir.CONFIG}; pass a fedray run directory"
        )
    cfg = load_config(path / rundir.CONFIG)
    prep = prepare(cfg)
    found = latest_good_checkpoint(path / rundir.CHECKPOINTS)
    if found is None:
        print(
            f"resume: {path} has no usable checkpoint; starting it again from round 1",
            file=sys.stderr,
        )
    else:
        print(
            f"resume: {path} continues after round {found[2]['round']} ({found[0].name})",
            file=sys.stderr,
        )
    return _execute(cfg, prep, path, launch, None, found, on_round)


def _round_inputs(cfg: RunConfig, prep: Prepared) -> RoundInputs:
    return RoundInputs(
        num_clients=cfg.federation.num_clients,
        clients_per_round=cfg.federation.clients_per_round,
        weighted=cfg.federation.aggregation == "weighted",
        seed=cfg.seed,
        spec=prep.train_spec,
        profile=prep.profile,
        profiles=prep.profiles,
        deadline_s=cfg.federation.round_deadline_s,
        partial=cfg.federation.deadline_policy == "partial",
        oversample=cfg.federation.oversample,
        poisson=cfg.federation.sampling == "poisson",
        enforce_memory=cfg.devices.enforce_memory,
        use_availability=cfg.devices.use_availability,
        dp=(cfg.privacy.clip_norm, cfg.privacy.noise_multiplier, cfg.privacy.delta)
        if cfg.privacy.dp
        else None,
        kill_prob=cfg.faults.client_kill_prob,
        delay_prob=cfg.faults.client_delay_prob,
        delay_s=cfg.faults.client_delay_s,
        eval_batch_size=cfg.eval.batch_size,
        task=cfg.model.task,
    )


def _execute(cfg, prep, run_dir: Path, launch: Launch, backend, resume_from, on_round=None) -> Path:
    last = resume_from[2]["round"] if resume_from is not None else 0
    _cut_back(run_dir, last)  # records after the checkpoint a run resumes from are redone
    alg = get_algorithm(cfg.algorithm)
    if not alg.federated:
        resume = (resume_from[1], resume_from[2]) if resume_from is not None else None
        fit = launch.fit_central(cfg, prep, run_dir)
        return run_centralized(cfg, prep, run_dir, fit, resume)
    t_start = time.perf_counter()
    backend, server = _start_clients(cfg, prep, alg, backend or launch.backend(cfg, prep))
    info, start_s = backend.info(), time.perf_counter() - t_start
    optimizer = _server_optimizer(cfg, run_dir, last)
    run = _Progress.begin(backend.initial_state(), server, optimizer, resume_from)
    history, tracker = rundir.read_metrics(run_dir), Tracker(cfg, run_dir)
    inp = _round_inputs(cfg, prep)
    try:
        for rnd in range(run.first, cfg.federation.rounds + 1):
            record, clients = _round(cfg, rnd, run, inp, prep, backend, server, optimizer)
            record["time/wall_s"] = run.wall0 + time.perf_counter() - t_start
            rundir.append_metrics(run_dir, record)
            _append_clients(run_dir, clients)
            history.append(record)
            tracker.log(record)
            print_round(record)
            if on_round is not None:
                on_round(record)
            if rnd % cfg.checkpoint.every == 0 or rnd == cfg.federation.rounds:
                _checkpoint(cfg, run_dir, rnd, run, server, optimizer, record["time/wall_s"])
        # FedPT: greedy samples of the proxy-tuned LM
        server.write_samples(deserialize_state(run.blob), run_dir / "samples.md")
        summary = build_summary(
            history, run.ledger, info, cfg, start_s, run.virtual, alg.label(cfg)
        )
        rundir.write_json(run_dir / rundir.SUMMARY, summary)
        tracker.finish(summary, run.blob)
    finally:
        _shutdown(backend, server)
    print_table(cfg, summary, best_of(history), run_dir)
    return run_dir


def _start_clients(cfg: RunConfig, prep: Prepared, alg, backend: Backend) -> tuple[Any, Any]:
    """Start the client workers and the algorithm's server beside them (SFPrompt's body, FedPT's
    black box; FedAvg's NoServer); both are shut down if either fails to start."""
    server = NoServer()
    try:
        spec, server = alg.start(cfg, prep, worker_spec(cfg, prep), backend)
        backend.start(spec, prep.train, prep.evals.data, link=server.link)
    except BaseException:
        _shutdown(backend, server)
        raise
    return backend, server


@dataclass
class _Progress:
    """Where a run stands between rounds: what a checkpoint saves beside the servers' state."""

    blob: bytes  # the global trainable state
    ledger: Ledger
    first: int  # the next round to run
    wall0: float  # wall seconds of the run before this process (a resumed run)
    virtual: float  # virtual seconds so far

    @classmethod
    def begin(cls, initial: bytes, server, optimizer: ServerOptimizer, resume_from) -> _Progress:
        if resume_from is None:
            return cls(initial, Ledger(), 1, 0.0, 0.0)
        _, blob, meta = resume_from
        blob, slots = take_prefixed(blob, SLOT_PREFIX)  # the strategy's momentum and moments
        optimizer.load_state_dict(slots)
        blob = server.restore(blob)  # the checkpoint also holds what a server trains
        ledger = Ledger.from_state_dict(meta["ledger"])
        return cls(blob, ledger, meta["round"] + 1, meta["wall_s"], meta["virtual_s"])


def _round(cfg, rnd: int, run: _Progress, inp, prep, backend, server, optimizer):
    """Run round `rnd` (with its progress bar) and evaluate when due: the round's record (without
    the run's wall time) and its clients' rows."""
    t0 = time.perf_counter()
    rounds = cfg.federation.rounds
    bar = tqdm(
        total=inp.clients_per_round,
        desc=f"round {rnd}/{rounds}",
        unit="client",
        leave=False,
        file=sys.stderr,
        disable=None,
    )
    if cfg.faults.server_kill_round == rnd:
        server.crash_after()  # injected: the server actor dies inside a request
    out = run_round(
        rnd,
        run.blob,
        inp,
        prep,
        backend,
        run.ledger,
        lambda _r: bar.update(1),
        server=server,
        optimizer=optimizer,
    )
    bar.close()
    run.blob, record = out.blob, out.record
    if rnd % cfg.eval.every == 0 or rnd == rounds:
        record.update(evaluate_global(rnd, run.blob, prep, backend, inp.eval_batch_size, inp.task))
        # the server's own evaluation (FedPT: the proxy-tuned large LM)
        record.update(server.evaluate(deserialize_state(run.blob), inp.eval_batch_size))
    run.virtual += record["time/round_virtual_s"]
    record["time/virtual_s"] = run.virtual
    record["time/round_wall_s"] = time.perf_counter() - t0
    return record, out.clients


def _checkpoint(cfg, run_dir: Path, rnd: int, run: _Progress, server, optimizer, wall_s: float):
    """Save round `rnd`: the global state, the server's and the strategy's, the ledger, clocks."""
    meta = {"ledger": run.ledger.state_dict(), "wall_s": wall_s, "virtual_s": run.virtual}
    saved = add_tensors(server.with_state(run.blob), optimizer.state_dict())
    save_checkpoint(run_dir / rundir.CHECKPOINTS, rnd, saved, meta, cfg.checkpoint.keep)
    if optimizer.controls is not None:  # SCAFFOLD: drop what no kept checkpoint needs
        oldest = list_checkpoints(run_dir / rundir.CHECKPOINTS)[0]
        optimizer.controls.prune(int(oldest.name.removeprefix("round_")))


def _server_optimizer(cfg: RunConfig, run_dir: Path, last_round: int) -> ServerOptimizer:
    """The strategy's server side; SCAFFOLD's client variates start from `last_round`'s."""
    strategy, params = resolve(cfg.federation.strategy, cfg.strategy.model_dump())
    controls = None
    if strategy.control_variates:
        controls = ControlStore(run_dir / rundir.CONTROLS)
        controls.cut_back(last_round)  # versions after the checkpoint are redone
    return ServerOptimizer(strategy, params, controls)


def _shutdown(backend, server) -> None:
    try:
        server.shutdown()
    finally:
        backend.shutdown()


def _append_clients(run_dir: Path, rows: list[dict]) -> None:
    with (run_dir / "clients.jsonl").open("a") as f:
        for row in rows:
            f.write(json.dumps(row, default=float) + "\n")


def _cut_back(run_dir: Path, last_round: int) -> None:
    if (run_dir / rundir.METRICS).exists():
        rundir.truncate_metrics(run_dir, last_round)
    _truncate_clients(run_dir, last_round)


def _truncate_clients(run_dir: Path, last_round: int) -> None:
    path = run_dir / "clients.jsonl"
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if _round_of(ln) <= last_round]
        rundir.atomic_write(path, "".join(ln + "\n" for ln in keep))


def _round_of(line: str) -> int:
    try:
        return int(json.loads(line)["round"])
    except (json.JSONDecodeError, KeyError):
        return 1 << 30
