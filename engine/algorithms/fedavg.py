"""FedAvg / FedPETuning rounds: broadcast the trainable state, train sampled clients, average, evaluate."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from engine.aggregate import fedavg, fedavg_weights
from engine.backend import Backend
from engine.client import ClientResult, ClientTask
from engine.clock import DeviceProfile, client_time_s, round_time_s
from engine.ledger import Ledger, deserialize_state, serialize_state
from engine.prepare import Prepared, eval_shards, unshard
from engine.train import TrainSpec, derive_seed, eval_metrics, merge_eval

SAMPLING_STREAM = 1  # seed stream ids keep sampling and training randomness independent
TRAINING_STREAM = 2


def sample_clients(num_clients: int, k: int, seed: int, round: int) -> np.ndarray:
    """The clients of a round: k distinct ids, a pure function of (seed, round)."""
    rng = np.random.default_rng(derive_seed(seed, round, SAMPLING_STREAM))
    return np.sort(rng.choice(num_clients, size=k, replace=False))


@dataclass
class RoundInputs:
    """Plain values one FedAvg round needs."""

    num_clients: int
    clients_per_round: int
    weighted: bool
    seed: int
    spec: TrainSpec
    profile: DeviceProfile
    eval_batch_size: int
    task: str


class RoundServer(Protocol):
    """A server-side party of the round (SFPrompt's body server); FedAvg has none."""

    def lost(self, result: object) -> bool: ...  # did this client fail because the server died?

    def recover(self) -> None: ...  # wait for the restarted server and restore its round state

    def end_round(
        self, weights: dict[int, float], state: dict[str, np.ndarray], round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...  # after FedAvg: next state + record


@dataclass
class RoundOutcome:
    blob: bytes  # the new global trainable state
    record: dict[str, Any]
    clients: list[dict[str, Any]] = field(default_factory=list)  # per-client rows for clients.jsonl


def run_round(
    round: int,
    global_blob: bytes,
    inp: RoundInputs,
    prep: Prepared,
    backend: Backend,
    ledger: Ledger,
    on_result: Callable[[ClientResult], None],
    server: RoundServer | None = None,
) -> RoundOutcome:
    ids = sample_clients(inp.num_clients, inp.clients_per_round, inp.seed, round)
    tasks = [
        ClientTask(
            round=round,
            client_id=int(c),
            rows=prep.parts[c],
            seed=derive_seed(inp.seed, round, int(c), TRAINING_STREAM),
            spec=inp.spec,
        )
        for c in ids
    ]
    results = backend.run_clients(tasks, global_blob, on_result)
    restarts = 0
    if server is not None and any(server.lost(r) for r in results.values()):
        # The server died mid-round: wait for its restart, then redo the round once from the
        # same global state and seeds (so the round's result is what it would have been).
        server.recover()
        restarts = 1
        results = backend.run_clients(tasks, global_blob, on_result)
    ok = [results[c] for c in sorted(results) if isinstance(results[c], ClientResult)]
    failed = {c: repr(r) for c, r in results.items() if not isinstance(r, ClientResult)}
    rows, times = [], {}
    for r in ok:
        down = ledger.record(round, r.client_id, "down", "trainable_state", r.bytes_down)
        up = ledger.record(round, r.client_id, "up", "trainable_state", r.blob)
        for key, nbytes in sorted(r.traffic.items()):  # split activations and gradients
            direction, kind = key.split("/", 1)
            nbytes = ledger.record(round, r.client_id, direction, kind, nbytes)
            down, up = (down + nbytes, up) if direction == "down" else (down, up + nbytes)
        ledger.record_compute(round, r.client_id, r.train.flops, r.peak_memory_bytes)
        t = client_time_s(inp.profile, flops=r.train.flops, bytes_down=down, bytes_up=up)
        times[r.client_id] = t["total_s"]
        rows.append(
            {
                "round": round,
                "client": r.client_id,
                "num_samples": r.train.num_samples,
                "steps": r.train.steps,
                "train_loss": r.train.loss,
                "bytes_up": up,
                "bytes_down": down,
                "flops": r.train.flops,
                "peak_memory_bytes": r.peak_memory_bytes,
                "cpu_s": r.cpu_s,
                **r.traffic,
                **r.extra,
                **{f"virtual_{k}": v for k, v in t.items()},
            }
        )
    if not ok:
        from engine.errors import FedRayRuntimeError

        raise FedRayRuntimeError(f"round {round}: every sampled client failed: {failed}")
    weights = fedavg_weights([r.train.num_samples for r in ok], inp.weighted)
    new_state = fedavg([deserialize_state(r.blob) for r in ok], weights)
    server_record: dict[str, Any] = {}
    if server is not None:
        client_weights = {r.client_id: float(w) for r, w in zip(ok, weights, strict=True)}
        new_state, server_record = server.end_round(client_weights, new_state, round)
    round_s, straggler = round_time_s(times)
    totals = ledger.round_totals(round)
    record = {
        "round": round,
        "comm/bytes_up": totals["bytes_up"],
        "comm/bytes_down": totals["bytes_down"],
        "comm/bytes_total_cum": ledger.cumulative_bytes(),
        "time/round_virtual_s": round_s,
        "clients/sampled": len(ids),
        "clients/completed": len(ok),
        "clients/failed": len(failed),
        "clients/straggler": straggler,
        "train/loss": float(np.mean([r.train.loss for r in ok])),
        "client/flops_mean": float(np.mean([r.train.flops for r in ok])),
    }
    if failed:
        record["clients/failed_reasons"] = failed
    if server is not None:
        record["server/restarts"] = restarts
        record.update(server_record)
    for name in sorted({k for r in ok for k in r.extra}):
        record[f"client/{name}_mean"] = float(np.mean([r.extra.get(name, np.nan) for r in ok]))
    for name in sorted({k for r in ok for k in r.traffic}):
        record[f"comm/{name.replace('/', '_')}"] = int(sum(r.traffic.get(name, 0) for r in ok))
    return RoundOutcome(blob=serialize_state(new_state), record=record, clients=rows)


def evaluate_global(
    version: int, blob: bytes, prep: Prepared, backend: Backend, batch_size: int, task: str
) -> dict[str, float]:
    shards = eval_shards(prep.test, batch_size, backend.num_workers)
    t0 = time.perf_counter()
    sums = merge_eval(unshard(backend.evaluate(version, blob, shards)))
    metrics = {f"eval/{k}": v for k, v in eval_metrics(sums, task).items()}
    metrics["time/eval_wall_s"] = time.perf_counter() - t0
    return metrics
