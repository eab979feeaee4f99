"""One FedAvg round on the in-process backend: sampling, the ledger and the aggregate, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from engine.aggregate import fedavg
from engine.backend import LocalBackend
from engine.client import ClientRuntime, worker_spec
from engine.config import validate_config
from engine.ledger import Ledger, deserialize_state
from engine.prepare import prepare
from engine.rounds import RoundInputs, max_by_device, run_round, sample_clients


def test_sampling_is_a_pure_function_of_seed_and_round() -> None:
    a = sample_clients(100, 10, seed=0, round=3)
    assert len(set(a.tolist())) == 10 and list(a) == sorted(a)
    np.testing.assert_array_equal(a, sample_clients(100, 10, seed=0, round=3))
    assert not np.array_equal(a, sample_clients(100, 10, seed=0, round=4))
    assert not np.array_equal(a, sample_clients(100, 10, seed=1, round=3))


@pytest.fixture(scope="module")
def setup():
    cfg = validate_config(
        {
            "model": {"name": "tiny-bert-random", "max_length": 32},
            "data": {"max_train_samples": 60, "max_test_samples": 16},
            "federation": {"num_clients": 4, "clients_per_round": 3, "rounds": 1},
            "train": {"local_steps": 2, "batch_size": 4},
            "method": {"name": "lora", "r": 2},
        }
    )
    prep = prepare(cfg)
    backend = LocalBackend()
    backend.start(worker_spec(cfg, prep), prep.train, prep.test)
    return cfg, prep, backend


def _inputs(cfg, prep, weighted: bool) -> RoundInputs:
    return RoundInputs(
        num_clients=4,
        clients_per_round=3,
        weighted=weighted,
        seed=cfg.seed,
        spec=prep.train_spec,
        profile=prep.profile,
        eval_batch_size=8,
        task="classification",
    )


@pytest.mark.parametrize("weighted", [True, False])
def test_round_aggregates_exactly_the_client_updates(setup, weighted: bool) -> None:
    cfg, prep, backend = setup
    blob = backend.initial_state()
    ledger = Ledger()
    seen = []
    out = run_round(1, blob, _inputs(cfg, prep, weighted), prep, backend, ledger, seen.append)
    ids = sample_clients(4, 3, cfg.seed, 1)
    assert sorted(r.client_id for r in seen) == ids.tolist()
    # Recompute each client's update on a separate runtime and average by hand.
    other = ClientRuntime(worker_spec(cfg, prep), prep.train, prep.test)
    from engine.client import ClientTask
    from engine.rounds import TRAINING_STREAM
    from engine.train import derive_seed

    states, sizes = [], []
    for c in ids:
        task = ClientTask(
            1,
            int(c),
            prep.parts[c],
            derive_seed(cfg.seed, 1, int(c), TRAINING_STREAM),
            prep.train_spec,
        )
        states.append(deserialize_state(other.train_client(task, blob).blob))
        sizes.append(len(prep.parts[c]))
    w = np.array(sizes, dtype=np.float64) / sum(sizes) if weighted else np.full(3, 1 / 3)
    expected = fedavg(states, w)
    got = deserialize_state(out.blob)
    assert sorted(got) == sorted(expected)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])
    # The ledger counts each client's download and upload: the serialized payload lengths.
    rec = out.record
    assert rec["comm/bytes_down"] == 3 * len(blob)
    assert rec["comm/bytes_up"] == sum(r.blob.__len__() for r in seen)
    assert rec["clients/completed"] == 3 and rec["clients/failed"] == 0
    assert rec["time/round_virtual_s"] == max(c["virtual_total_s"] for c in out.clients)


def test_the_slowest_wall_time_and_the_largest_gpu_peak_are_kept_per_device() -> None:
    from types import SimpleNamespace

    devices = {0: "phone-low", 1: "laptop", 2: "phone-low", 3: "laptop"}
    inp = SimpleNamespace(device=lambda c: SimpleNamespace(name=devices[c]))
    results = [
        SimpleNamespace(client_id=c, wall_s=w, device_peak_bytes=p)
        for c, w, p in ((0, 2.0, None), (1, 0.5, 300), (2, 3.5, None), (3, 0.25, 700))
    ]
    assert max_by_device(results, inp, lambda r: r.wall_s) == {"laptop": 0.5, "phone-low": 3.5}
    assert max_by_device([], inp, lambda r: r.wall_s) == {}
    # CPU workers measure no GPU peak: their device has no entry
    assert max_by_device(results, inp, lambda r: r.device_peak_bytes) == {"laptop": 700}
