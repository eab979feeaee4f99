"""Heterogeneous devices: seeded assignment, availability, deadlines, over-sampling, memory budgets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from actors.launch import start_run
from engine.backend import LocalBackend
from engine.clock import DeviceProfile, assign_profiles, load_device_profile
from engine.config import load_config
from engine.errors import ConfigError
from engine.rounds import RoundInputs, arrivals, round_duration, unavailable
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[3]


def _inputs(k: int = 2, deadline: float | None = None, profiles=None, n: int = 4) -> RoundInputs:
    laptop = load_device_profile("laptop")
    return RoundInputs(num_clients=n, clients_per_round=k, weighted=True, seed=0, spec=None,  # type: ignore[arg-type]
                       profile=laptop, eval_batch_size=8, task="classification",
                       profiles=profiles, deadline_s=deadline)  # fmt: skip


def test_assignment_counts_are_exact_and_seeded() -> None:
    mix = {"phone-low": 0.5, "phone-mid": 0.3, "laptop": 0.2}
    a = [p.name for p in assign_profiles(mix, "laptop", 10, seed=0)]
    assert (a.count("phone-low"), a.count("phone-mid"), a.count("laptop")) == (5, 3, 2)
    assert a == [p.name for p in assign_profiles(mix, "laptop", 10, seed=0)]
    assert a != [p.name for p in assign_profiles(mix, "laptop", 10, seed=1)]
    # 7 clients: exact shares 3.5 / 2.1 / 1.4 -> floors 3/2/1, the one left to the largest remainder
    b = [p.name for p in assign_profiles(mix, "laptop", 7, seed=0)]
    assert (b.count("phone-low"), b.count("phone-mid"), b.count("laptop")) == (4, 2, 1)
    assert {p.name for p in assign_profiles(None, "jetson-nano", 3, 0)} == {"jetson-nano"}
    with pytest.raises(ConfigError) as err:
        assign_profiles({"toaster": 1.0}, "laptop", 3, 0)
    assert err.value.key == "devices.mix.toaster"


def test_deadline_drops_late_clients_and_the_round_waits_until_it() -> None:
    times = {0: 5.0, 1: 12.0, 2: 8.0, 3: 20.0}
    inp = _inputs(k=4, deadline=10.0)
    accepted, late = arrivals(times, inp)
    assert accepted == {0, 2} and late == {1: "deadline", 3: "deadline"}
    assert round_duration(times, accepted, late, inp) == (10.0, 3)


def test_oversampling_keeps_the_first_k_reports() -> None:
    times = {0: 5.0, 1: 12.0, 2: 8.0, 3: 20.0}
    inp = _inputs(k=2)
    accepted, late = arrivals(times, inp)
    assert accepted == {0, 2} and late == {1: "oversampled", 3: "oversampled"}
    assert round_duration(times, accepted, late, inp) == (8.0, 2)  # the 2nd report ends the round
    inp = _inputs(k=2, deadline=6.0)  # deadline first, then the first k of the rest
    accepted, late = arrivals(times, inp)
    assert accepted == {0} and set(late.values()) == {"deadline"}


def test_availability_is_seeded_per_round_and_matches_the_probability() -> None:
    half = DeviceProfile(name="half", flops_per_s=1e9, memory_mb=100, uplink_mbps=1,
                         downlink_mbps=1, availability=0.5)  # fmt: skip
    inp = _inputs(n=200, profiles=[half] * 200)
    ids = np.arange(200)
    gone = [len(unavailable(ids, inp, r)) for r in range(1, 21)]
    assert unavailable(ids, inp, 3) == unavailable(ids, inp, 3)
    assert unavailable(ids, inp, 3) != unavailable(ids, inp, 4)
    assert 0.45 < np.mean(gone) / 200 < 0.55
    always = _inputs(n=200)  # laptop: availability 1
    assert unavailable(ids, always, 1) == {}


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_heterogeneous_run_records_devices_drops_and_reasons(tmp_path: Path) -> None:
    over = tiny_overrides(**{
        "devices.mix": "{phone-low: 0.5, laptop: 0.5}", "federation.round_deadline_s": 0.2,
        "federation.oversample": 1.5, "federation.clients_per_round": 2, "federation.rounds": 4,
    })  # fmt: skip
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", over)
    run = start_run(cfg, out=str(tmp_path / "run"), backend=LocalBackend())
    devices = [c["device"] for c in json.loads((run / "partition.json").read_text())["clients"]]
    assert sorted(devices) == ["laptop"] * 3 + ["phone-low"] * 3
    clients = [json.loads(x) for x in (run / "clients.jsonl").read_text().splitlines()]
    for r in _records(run):
        assert r["clients/sampled"] == 3  # ceil(2 * 1.5)
        rows = [c for c in clients if c["round"] == r["round"]]
        reasons = r.get("clients/dropped_reasons", {})
        assert r["clients/completed"] + r["clients/dropped"] + r["clients/failed"] == 3
        assert r["clients/completed"] <= 2
        for c in rows:
            assert c["device"] == devices[c["client"]]
            assert c["accepted"] == (str(c["client"]) not in reasons and c["client"] not in reasons)
            if c["virtual_total_s"] > 0.2:
                assert reasons.get(c["client"], reasons.get(str(c["client"]))) == "deadline"
        for c, why in reasons.items():
            if why == "unavailable":  # only phones miss rounds here; they never trained
                assert devices[int(c)] == "phone-low"
                assert all(x["client"] != int(c) for x in rows)
    whys = [w for r in _records(run) for w in r.get("clients/dropped_reasons", {}).values()]
    assert {"deadline", "unavailable"} <= set(whys)  # phones on a slow link miss the 0.2 s deadline
    late = [r for r in _records(run) if "deadline" in r.get("clients/dropped_reasons", {}).values()]
    assert all(r["time/round_virtual_s"] == 0.2 for r in late)


def test_memory_budget_fails_clients_without_crashing_the_run(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny-device.yaml"
    tiny.write_text("name: tiny-device\nflops_per_s: 1.0e+9\nmemory_mb: 1\nuplink_mbps: 1\n"
                    "downlink_mbps: 1\n")  # fmt: skip
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      tiny_overrides(**{"resources.device_profile": str(tiny)}))  # fmt: skip
    run = start_run(cfg, out=str(tmp_path / "run"), backend=LocalBackend())
    recs = _records(run)
    for r in recs:
        assert r["clients/failed"] == r["clients/sampled"] and r["clients/completed"] == 0
        assert all(why.startswith("memory: training peak") and "tiny-device's 1 MiB" in why
                   for why in r["clients/failed_reasons"].values())  # fmt: skip
    # no update was ever aggregated: the model is the initial one every round
    assert len({r["eval/accuracy"] for r in recs}) == 1 and len({r["eval/loss"] for r in recs}) == 1
