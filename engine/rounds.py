"""The federated round every algorithm shares: broadcast the trainable state, train sampled clients,
aggregate through the run's strategy, let the algorithm's server end the round, evaluate."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.aggregate import fedavg, fedavg_weights
from engine.algorithms.base import NoServer, RoundServer
from engine.backend import Backend
from engine.client import ClientResult, ClientTask
from engine.clock import DeviceProfile, client_time_s, round_time_s
from engine.errors import FedRayRuntimeError
from engine.evalsets import evaluate_sets
from engine.ledger import Ledger, deserialize_state, serialize_state
from engine.prepare import Prepared, eval_shards, unshard
from engine.privacy import dp_aggregate, epsilon
from engine.strategies import ServerOptimizer
from engine.strategies.fedavg import FEDAVG
from engine.summary import DEVICE_PEAK
from engine.train import TrainSpec, derive_seed

SAMPLING_STREAM = 1  # seed stream ids keep sampling and training randomness independent
TRAINING_STREAM = 2
AVAILABILITY_STREAM = 3
FAULT_STREAM = 5
DP_STREAM = 6


def sample_clients(
    num_clients: int, k: int, seed: int, round: int, poisson: bool = False
) -> np.ndarray:
    """The clients of a round, a pure function of (seed, round): k distinct ids, or with `poisson`
    each client independently with probability k / num_clients (sorted ids, possibly none)."""
    rng = np.random.default_rng(derive_seed(seed, round, SAMPLING_STREAM))
    if poisson:
        return np.flatnonzero(rng.random(num_clients) < k / num_clients)
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
    profiles: list[DeviceProfile] | None = None  # per client; None: `profile` for every client
    deadline_s: float | None = None  # virtual seconds; later clients are dropped
    partial: bool = False  # deadline_policy=partial: slow clients run the steps that fit
    oversample: float = 1.0  # sample ceil(k * oversample), aggregate the first k reports
    poisson: bool = False  # federation.sampling=poisson: each client with probability k / n
    enforce_memory: bool = True  # a client over its device's memory fails
    use_availability: bool = True  # a sampled client shows up with its device's availability
    dp: tuple[float, float, float] | None = None  # privacy: (clip_norm, noise_multiplier, delta)
    kill_prob: float = 0.0  # faults: a client task kills its worker (seeded)
    delay_prob: float = 0.0  # faults: a client task sleeps delay_s wall seconds first
    delay_s: float = 0.0

    def device(self, client: int) -> DeviceProfile:
        return self.profiles[client] if self.profiles is not None else self.profile

    def sampled(self) -> int:
        return min(self.num_clients, math.ceil(self.clients_per_round * self.oversample - 1e-9))


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
    optimizer: ServerOptimizer | None = None,
) -> RoundOutcome:
    """One round: sample and train clients, account for what they spent, accept the reports the
    deadline and over-sampling allow, aggregate them through `optimizer` (the run's strategy; None:
    FedAvg), let `server` (the algorithm's; None: no server) end the round, and record it."""
    optimizer = optimizer or ServerOptimizer(FEDAVG, {})
    server = server or NoServer()
    global_state = deserialize_state(global_blob)
    t = _train(round, global_blob, global_state, inp, prep, backend, on_result, server, optimizer)
    rows, times = _account(round, t.ok, inp, ledger, optimizer.control_traffic(global_state))
    if not t.ok and t.failed and not any(isinstance(r, str) for r in t.results.values()):
        # every client crashed: not a device limit
        raise FedRayRuntimeError(f"round {round}: every sampled client failed: {t.failed}")
    idle = {r.client_id for r in t.ok if r.train.partial and r.train.steps == 0}
    accepted, late = arrivals(times, inp, idle)
    t.dropped.update(late)
    partial = {r.client_id for r in t.ok if r.train.partial}
    for row in rows:
        row["accepted"] = row["client"] in accepted
        if inp.partial:
            row["partial"] = row["client"] in partial
        if row["client"] in late:
            row["dropped"] = late[row["client"]]
    used = [r for r in t.ok if r.client_id in accepted]
    new_state, server_record = _aggregate(round, used, global_state, inp, server, optimizer)
    round_s, straggler = round_duration(times, accepted, late, inp)
    record = {
        "round": round,
        **_traffic_totals(ledger, round),
        "time/round_virtual_s": round_s,
        "clients/sampled": len(t.ids),
        "clients/completed": len(used),
        "clients/failed": len(t.failed),
        "clients/dropped": len(t.dropped),
        "clients/retried": int(getattr(backend, "last_retries", 0)),
        # dead worker processes replaced so far in this run (a killed task, a lost node)
        "clients/workers_replaced": int(getattr(backend, "replaced", 0)),
        "clients/straggler": straggler,
    }
    if t.failed:
        record["clients/failed_reasons"] = t.failed
    if inp.partial:  # aggregated updates from clients that ran only part of their local work
        record["clients/partial"] = len(partial & accepted)
    if t.dropped:
        record["clients/dropped_reasons"] = {c: t.dropped[c] for c in sorted(t.dropped)}
    record["server/restarts"] = t.restarts
    record.update(server_record)
    record.update(_client_summaries(t.ok, inp))
    return RoundOutcome(blob=serialize_state(new_state), record=record, clients=rows)


@dataclass
class _Trained:
    """What the clients of a round came back with."""

    ids: np.ndarray  # sampled
    dropped: dict[int, str]  # client -> why it did not count (unavailable, then late)
    results: dict[int, Any]  # client -> ClientResult, or why it failed
    ok: list[ClientResult]  # the results that arrived, in client order
    failed: dict[int, str]
    restarts: int  # the server died mid-round and the round was redone (0 or 1)


def _train(
    round: int,
    global_blob: bytes,
    global_state: dict[str, np.ndarray],
    inp: RoundInputs,
    prep: Prepared,
    backend: Backend,
    on_result: Callable[[ClientResult], None],
    server: RoundServer,
    optimizer: ServerOptimizer,
) -> _Trained:
    """Sample the round's clients and train those that show up; a client over its device's
    memory is failed (its app would be killed: its update never arrives)."""
    ids = sample_clients(inp.num_clients, inp.sampled(), inp.seed, round, inp.poisson)
    dropped = unavailable(ids, inp, round)
    tasks = [
        ClientTask(
            round=round,
            client_id=c,
            rows=prep.parts[c],
            seed=derive_seed(inp.seed, round, c, TRAINING_STREAM),
            spec=inp.spec,
            fault=injected_fault(inp, round, c),
            flops_budget=flops_budget(inp, c, len(global_blob)),
            correction=optimizer.correction(c, round, global_state),
        )
        for c in (int(c) for c in ids)
        if c not in dropped
    ]
    results = backend.run_clients(tasks, global_blob, on_result) if tasks else {}
    restarts = 0
    if any(server.lost(r) for r in results.values()):
        # The server died mid-round: wait for its restart, then redo the round once from the
        # same global state and seeds (so the round's result is what it would have been).
        server.recover()
        restarts = 1
        results = backend.run_clients(tasks, global_blob, on_result)
    ok = [results[c] for c in sorted(results) if isinstance(results[c], ClientResult)]
    if inp.enforce_memory:
        for r in ok:
            dev = inp.device(r.client_id)
            if r.peak_memory_bytes > dev.memory_bytes:
                results[r.client_id] = (
                    f"memory: training peak {r.peak_memory_bytes / 2**20:.0f} MiB > "
                    f"{dev.name}'s {dev.memory_mb} MiB"
                )
        ok = [r for r in ok if isinstance(results[r.client_id], ClientResult)]
    failed = {
        c: r if isinstance(r, str) else repr(r)
        for c, r in results.items()
        if not isinstance(r, ClientResult)
    }
    return _Trained(ids, dropped, results, ok, failed, restarts)


def _account(
    round: int, ok: list[ClientResult], inp: RoundInputs, ledger: Ledger, control: dict[str, int]
) -> tuple[list[dict[str, Any]], dict[int, float]]:
    """Record every arrived client's bytes and compute in the ledger; its clients.jsonl row and
    its virtual finish time. `control`: the strategy's extra messages per client (SCAFFOLD)."""
    rows, times = [], {}
    for r in ok:
        r.traffic.update(control)
        down = ledger.record(round, r.client_id, "down", "trainable_state", r.bytes_down)
        up = ledger.record(round, r.client_id, "up", "trainable_state", r.blob)
        for key, nbytes in sorted(r.traffic.items()):  # split activations and gradients
            direction, kind = key.split("/", 1)
            nbytes = ledger.record(round, r.client_id, direction, kind, nbytes)
            down, up = (down + nbytes, up) if direction == "down" else (down, up + nbytes)
        ledger.record_compute(round, r.client_id, r.train.flops, r.peak_memory_bytes)
        dev = inp.device(r.client_id)
        t = client_time_s(dev, flops=r.train.flops, bytes_down=down, bytes_up=up)
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
                "device": dev.name,
            }
        )
    return rows, times


def _aggregate(
    round: int,
    used: list[ClientResult],
    global_state: dict[str, np.ndarray],
    inp: RoundInputs,
    server: RoundServer,
    optimizer: ServerOptimizer,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The next global state from the accepted reports, and what the server side records."""
    states = [deserialize_state(r.blob) for r in used]
    record = optimizer.commit_controls(
        round,
        [(r.client_id, y, r.train.steps) for r, y in zip(used, states, strict=True)],
        global_state,
        inp.spec.lr,
        inp.num_clients,
    )
    # DP-FedAvg: clipped updates, fixed denominator, noise; under Poisson sampling the noise is
    # added even when nobody reported (the accountant's mechanism always releases a noisy sum)
    if inp.dp is not None and (used or inp.poisson):
        clip, z, delta = inp.dp
        rng = np.random.default_rng(derive_seed(inp.seed, round, DP_STREAM))
        noisy, dp_record = dp_aggregate(global_state, states, clip, z, inp.clients_per_round, rng)
        q = inp.clients_per_round / inp.num_clients
        dp_record["privacy/epsilon"] = epsilon(z, q, round, delta)
        new_state, step_record = optimizer.step(global_state, noisy)  # post-processing
        return new_state, record | dp_record | step_record
    if not used:  # nobody reported in time: the global state (and the optimizer's slots) stay
        return global_state, record
    weights = fedavg_weights([r.train.num_samples for r in used], inp.weighted)
    new_state, step_record = optimizer.step(global_state, fedavg(states, weights))
    client_weights = {r.client_id: float(w) for r, w in zip(used, weights, strict=True)}
    new_state, end_record = server.end_round(client_weights, new_state, round)
    return new_state, record | step_record | end_record


def _traffic_totals(ledger: Ledger, round: int) -> dict[str, int]:
    totals = ledger.round_totals(round)
    return {
        "comm/bytes_up": totals["bytes_up"],
        "comm/bytes_down": totals["bytes_down"],
        "comm/bytes_total_cum": ledger.cumulative_bytes(),
    }


def _client_summaries(ok: list[ClientResult], inp: RoundInputs) -> dict[str, Any]:
    """The round record's per-client aggregates: loss, FLOPs, slowest wall time and GPU peak per
    device, the means of algorithm-specific figures and the totals of split traffic kinds."""
    out: dict[str, Any] = {
        "train/loss": float(np.mean([r.train.loss for r in ok])) if ok else float("nan"),
        "client/flops_mean": float(np.mean([r.train.flops for r in ok])) if ok else 0.0,
    }
    for dev, wall in max_by_device(ok, inp, lambda r: r.wall_s).items():
        out[f"time/round_wall_s/{dev}"] = wall  # how long each device's workers took (real s)
    for dev, peak in max_by_device(ok, inp, lambda r: r.device_peak_bytes).items():
        out[DEVICE_PEAK + dev] = peak  # measured on GPU workers only
    for name in sorted({k for r in ok for k in r.extra}):
        out[f"client/{name}_mean"] = float(np.mean([r.extra.get(name, np.nan) for r in ok]))
    for name in sorted({k for r in ok for k in r.traffic}):
        out[f"comm/{name.replace('/', '_')}"] = int(sum(r.traffic.get(name, 0) for r in ok))
    return out


def max_by_device(
    results: list, inp: RoundInputs, value: Callable[[ClientResult], float | None]
) -> dict[str, float]:
    """{device profile: the largest `value` among its clients' results this round}, by device name;
    results whose value is None (e.g. no GPU peak on a CPU worker) are left out."""
    most: dict[str, float] = {}
    for r in results:
        v = value(r)
        if v is not None:
            dev = inp.device(r.client_id).name
            most[dev] = max(most.get(dev, v), v)
    return dict(sorted(most.items()))


def injected_fault(inp: RoundInputs, round: int, client: int) -> str | None:
    """faults.*: what this client's first attempt suffers this round (seeded, independent draws)."""
    if not (inp.kill_prob or inp.delay_prob):
        return None
    rng = np.random.default_rng(derive_seed(inp.seed, round, client, FAULT_STREAM))
    kill, delay = rng.random(2)
    if kill < inp.kill_prob:
        return "kill"
    return f"delay:{inp.delay_s:g}" if delay < inp.delay_prob else None


def unavailable(ids: np.ndarray, inp: RoundInputs, round: int) -> dict[int, str]:
    """Sampled clients that do not show up this round (seeded per round, per client)."""
    if not inp.use_availability:
        return {}
    u = np.random.default_rng(derive_seed(inp.seed, round, AVAILABILITY_STREAM)).random(
        inp.num_clients
    )
    return {int(c): "unavailable" for c in ids if u[int(c)] >= inp.device(int(c)).availability}


def flops_budget(inp: RoundInputs, client: int, state_bytes: int) -> float | None:
    """deadline_policy=partial: the FLOPs a client can spend and still report by the deadline.

    Its device needs the deadline minus the download, the upload (an update is the size of the
    state it received) and the message latency; what is left, times its FLOP/s, is its budget.
    """
    if not inp.partial or inp.deadline_s is None:
        return None
    dev = inp.device(client)
    comm = client_time_s(dev, flops=0.0, bytes_down=state_bytes, bytes_up=state_bytes)["total_s"]
    return max(inp.deadline_s - comm, 0.0) * dev.flops_per_s


def arrivals(
    times: dict[int, float],
    inp: RoundInputs,
    idle: frozenset[int] | set[int] = frozenset(),
) -> tuple[set[int], dict[int, str]]:
    """(clients aggregated, {client: why dropped}): the deadline, then the first k reports.

    `idle`: clients whose budget fitted no step (partial work); they count as missing the deadline.
    """
    late = {
        c: "deadline"
        for c, t in times.items()
        if c in idle or (inp.deadline_s is not None and t > inp.deadline_s)
    }
    on_time = sorted((t, c) for c, t in times.items() if c not in late)
    for _, c in on_time[inp.clients_per_round :]:  # over-sampled: enough reports already
        late[c] = "oversampled"
    return {c for _, c in on_time[: inp.clients_per_round]}, late


def round_duration(
    times: dict[int, float], accepted: set[int], late: dict[int, str], inp: RoundInputs
) -> tuple[float, int]:
    """The virtual round time: the server waits for the last accepted report, or the deadline."""
    missed = [c for c, why in late.items() if why == "deadline"]
    if missed:  # it waited until the deadline for the late ones; the slowest is the straggler
        return float(inp.deadline_s), max(missed, key=lambda c: (times[c], -c))
    if accepted:
        return round_time_s({c: times[c] for c in accepted})
    return 0.0, -1


def evaluate_global(
    version: int, blob: bytes, prep: Prepared, backend: Backend, batch_size: int, task: str
) -> dict[str, float]:
    """The global model's eval/* metrics (and val/* under eval.select: validation), its batches
    dealt round-robin over the workers."""

    def run(batches: list[np.ndarray]) -> list[dict]:
        shards = eval_shards(batches, backend.num_workers)
        return unshard(backend.evaluate(version, blob, shards))

    return evaluate_sets(prep.evals, batch_size, task, run)
