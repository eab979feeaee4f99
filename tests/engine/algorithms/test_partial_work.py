"""federation.deadline_policy=partial: slow clients run only the local steps the deadline leaves."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from actors.launch import start_run
from engine.backend import LocalBackend
from engine.client import ClientTask, worker_spec
from engine.clock import DeviceProfile
from engine.config import load_config
from engine.errors import ConfigError
from engine.prepare import prepare
from engine.rounds import RoundInputs, arrivals, flops_budget
from engine.runtime import make_runtime
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[3]
QUICK = ROOT / "configs" / "quickstart.yaml"


def test_the_budget_is_what_the_deadline_leaves_after_communication() -> None:
    dev = DeviceProfile(name="d", flops_per_s=1e9, memory_mb=64, uplink_mbps=8,
                        downlink_mbps=16, latency_ms=50)  # fmt: skip
    inp = RoundInputs(num_clients=2, clients_per_round=1, weighted=True, seed=0, spec=None,  # type: ignore[arg-type]
                      profile=dev, eval_batch_size=8, task="classification", deadline_s=10.0,
                      partial=True)  # fmt: skip
    # 1e6 bytes: 1 s up at 8 Mbps, 0.5 s down at 16 Mbps, 2 x 50 ms latency -> 8.4 s of compute
    assert flops_budget(inp, 0, 1_000_000) == pytest.approx(8.4e9)
    assert flops_budget(inp, 0, 10_000_000) == 0.0  # communication alone misses the deadline
    assert flops_budget(replace(inp, partial=False), 0, 1_000_000) is None
    # a client whose budget fitted no step is late even though its (comm-only) time is short
    accepted, late = arrivals({0: 1.6, 1: 9.0}, replace(inp, clients_per_round=2), idle={0})
    assert accepted == {1} and late == {0: "deadline"}


@pytest.fixture(scope="module")
def runtime():
    cfg = load_config(QUICK, tiny_overrides())
    prep = prepare(cfg)
    rt = make_runtime(worker_spec(cfg, prep), prep.train, prep.test)
    blob = rt.initial_state()

    def train(steps: int, budget: float | None = None):
        spec = replace(prep.train_spec, steps=steps)
        task = ClientTask(round=1, client_id=0, rows=prep.parts[0], seed=123, spec=spec,
                          flops_budget=budget)  # fmt: skip
        return rt.train_client(task, blob)

    return train, blob


def test_a_budget_cut_equals_training_fewer_steps_bit_for_bit(runtime) -> None:
    train, blob = runtime
    two, three = train(2), train(3)
    cut = train(6, budget=three.train.flops)  # exactly three steps' FLOPs
    assert (cut.train.steps, cut.train.partial, cut.train.flops) == (3, True, three.train.flops)
    assert cut.blob == three.blob and cut.train.loss == three.train.loss
    short = train(6, budget=three.train.flops - 1)  # the third step no longer fits
    assert (short.train.steps, short.blob) == (2, two.blob)
    idle = train(6, budget=0.0)
    assert (idle.train.steps, idle.train.partial, idle.train.flops) == (0, True, 0.0)
    assert idle.blob == blob  # nothing trained: the update is the global state
    roomy = train(3, budget=10 * three.train.flops)
    assert not roomy.train.partial and roomy.blob == three.blob


def _run(tmp_path: Path, policy: str) -> tuple[list[dict], list[dict]]:
    over = tiny_overrides(**{
        "devices.mix": "{phone-low: 0.5, laptop: 0.5}", "devices.use_availability": False,
        "train.local_steps": 6, "federation.round_deadline_s": 0.4,
        "federation.deadline_policy": policy,
    })  # fmt: skip
    run = start_run(load_config(QUICK, over), out=str(tmp_path / policy), backend=LocalBackend())
    read = lambda name: [json.loads(x) for x in (run / name).read_text().splitlines()]  # noqa: E731
    return read("metrics.jsonl"), read("clients.jsonl")


def test_slow_clients_contribute_partial_work_instead_of_being_dropped(tmp_path: Path) -> None:
    records, rows = _run(tmp_path, "partial")
    phones = [c for c in rows if c["device"] == "phone-low"]
    laptops = [c for c in rows if c["device"] == "laptop"]
    assert phones and laptops
    # A phone needs ~0.25 s to communicate and ~0.05 s per step: 6 steps miss 0.4 s, some fit.
    assert all(c["partial"] and 0 < c["steps"] < 6 and c["accepted"] for c in phones)
    assert all(c["virtual_total_s"] <= 0.4 for c in phones)
    assert all(not c["partial"] and c["steps"] == 6 and c["accepted"] for c in laptops)
    for r in records:
        in_round = [c for c in phones if c["round"] == r["round"]]
        assert r["clients/partial"] == len(in_round) and r["clients/dropped"] == 0
        assert r["clients/completed"] == 3
        # each device that trained this round has its workers' wall time
        ran = {c["device"] for c in rows if c["round"] == r["round"]}
        assert {k.rsplit("/", 1)[1] for k in r if k.startswith("time/round_wall_s/")} == ran
    dropped, dropped_rows = _run(tmp_path, "drop")
    assert all(c["steps"] == 6 for c in dropped_rows)
    assert all(r["clients/dropped_reasons"] for r in dropped if r["round"] == 1)
    assert set(dropped[0]["clients/dropped_reasons"].values()) == {"deadline"}
    # the same round-1 laptop trains from the same global state either way
    first = {c["client"]: c["train_loss"] for c in laptops if c["round"] == 1}
    assert first == {c["client"]: c["train_loss"] for c in dropped_rows
                     if c["round"] == 1 and c["device"] == "laptop"}  # fmt: skip
    assert records[-1]["eval/loss"] != dropped[-1]["eval/loss"]  # the phones' steps count


def test_partial_needs_a_deadline_and_a_whole_model_client() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(QUICK, tiny_overrides(**{"federation.deadline_policy": "partial"}))
    assert err.value.key == "federation.deadline_policy"
    assert "needs federation.round_deadline_s" in err.value.message
    cfg = load_config(ROOT / "configs" / "sfprompt" / "amazon_reviews.yaml", tiny_overrides(**{
        "federation.deadline_policy": "partial", "federation.round_deadline_s": 1.0}))  # fmt: skip
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert err.value.key == "federation.deadline_policy" and "use drop" in err.value.message
