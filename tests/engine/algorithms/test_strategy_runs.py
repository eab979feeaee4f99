"""Strategies in real (in-process) runs: each one resumed from a checkpoint equals the run never
stopped, slots included; FedProx keeps clients near the global model; DP composes with a server rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from actors.launch import resume_run, start_run
from engine import rundir
from engine.backend import LocalBackend
from engine.checkpoint import load_checkpoint, take_prefixed
from engine.config import load_config
from tests.conftest import record_diff, run_records, tiny_overrides, without_wall

QUICKSTART = Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml"


def _run(tmp_path: Path, name: str, **extra: object) -> Path:
    ov = tiny_overrides(**{"checkpoint.every": 1, "checkpoint.keep": 5, **extra})
    return start_run(load_config(QUICKSTART, ov), out=str(tmp_path / name), backend=LocalBackend())


STRATEGIES = ["fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "scaffold"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_resumed_run_equals_the_uninterrupted_one(tmp_path: Path, strategy: str) -> None:
    ref = _run(tmp_path, "ref", **{"federation.strategy": strategy})
    blob, _ = load_checkpoint(ref / rundir.CHECKPOINTS / "round_00003")
    _, slots = take_prefixed(blob, "strategy/")
    assert bool(slots) == (strategy != "fedprox")  # server rules keep slots; FedProx has none
    cut = tmp_path / "cut"
    shutil.copytree(ref, cut)
    shutil.rmtree(cut / rundir.CHECKPOINTS / "round_00003")  # as if killed during round 3
    resume_run(cut, backend=LocalBackend())
    diff = record_diff(without_wall(run_records(cut)), without_wall(run_records(ref)))
    assert not diff, diff
    again, _ = load_checkpoint(cut / rundir.CHECKPOINTS / "round_00003")
    assert again == blob
    assert _files(cut / rundir.CONTROLS) == _files(ref / rundir.CONTROLS)  # SCAFFOLD's c_i


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_scaffold_round_one_is_fedavg_and_it_doubles_the_bytes(tmp_path: Path) -> None:
    """With c = c_i = 0 the first round is FedAvg's exactly; the variates then change round 2.
    Every client sends dc_i beside its state and receives c beside the global state."""
    two = {"federation.rounds": 2, "train.optimizer": "sgd", "train.lr": 0.1}
    avg = run_records(_run(tmp_path, "avg", **two))
    run = _run(tmp_path, "scaffold", **two, **{"federation.strategy": "scaffold"})
    sca = run_records(run)
    assert sca[0]["eval/loss"] == avg[0]["eval/loss"]
    assert sca[1]["eval/loss"] != avg[1]["eval/loss"]
    for a, s in zip(avg, sca, strict=True):
        assert s["comm/bytes_up"] == 2 * a["comm/bytes_up"]
        assert s["comm/bytes_down"] == 2 * a["comm/bytes_down"]
        assert s["comm/up_control_variate"] == a["comm/bytes_up"]
    # the server's c is the mean of every client's newest variate (clients never sampled: 0)
    from engine.strategies import ControlStore

    blob, _ = load_checkpoint(run / rundir.CHECKPOINTS / "round_00002")
    _, slots = take_prefixed(blob, "strategy/")
    store = ControlStore(run / rundir.CONTROLS)
    variates = [store.load(i, 3) for i in range(6)]
    assert sum(v is not None for v in variates) >= 3
    for key, c in slots.items():
        name = key.removeprefix("strategy/c/")
        mean = sum(v[name].astype("float64") for v in variates if v is not None) / 6
        np.testing.assert_allclose(c, mean, rtol=1e-5, atol=1e-7)


def test_scaffold_prunes_versions_no_checkpoint_needs(tmp_path: Path) -> None:
    run = _run(tmp_path, "keep1", **{"federation.strategy": "scaffold", "checkpoint.keep": 1})
    for client in (run / rundir.CONTROLS).iterdir():
        assert len(list(client.glob("*.safetensors"))) == 1, client


def test_a_server_rule_changes_the_trajectory(tmp_path: Path) -> None:
    """The same clients and seeds: FedAdam's global state differs from FedAvg's after round 1,
    and its step is not FedAvg's delta (a wiring that ignored the strategy would fail here)."""
    one = {"federation.rounds": 1}
    avg = run_records(_run(tmp_path, "avg", **one))[0]
    adam = run_records(_run(tmp_path, "adam", **one, **{"federation.strategy": "fedadam"}))[0]
    assert avg["server/delta_norm"] == pytest.approx(adam["server/delta_norm"])  # same clients
    assert adam["server/step_norm"] != pytest.approx(adam["server/delta_norm"])
    assert avg["eval/loss"] != adam["eval/loss"]


def test_fedprox_keeps_local_work_near_the_global_model(tmp_path: Path) -> None:
    """With SGD and mu = 1 / lr, each step's proximal pull undoes the previous steps' drift, so
    the clients' mean update shrinks to about one step's worth out of three."""
    sgd = {
        "federation.rounds": 1,
        "train.optimizer": "sgd",
        "train.lr": 0.5,
        "train.local_steps": 3,
    }
    avg = run_records(_run(tmp_path, "avg", **sgd))[0]
    prox = run_records(
        _run(tmp_path, "prox", **sgd, **{"federation.strategy": "fedprox", "strategy.mu": 2.0})
    )[0]
    assert prox["server/delta_norm"] < 0.6 * avg["server/delta_norm"]


def test_dp_composes_with_a_server_optimizer(tmp_path: Path) -> None:
    pytest.importorskip("opacus")
    dp = {
        "federation.rounds": 2,
        "privacy.dp": True,
        "privacy.clip_norm": 0.5,
        "privacy.noise_multiplier": 0.5,
        "federation.strategy": "fedavgm",
    }
    recs = run_records(_run(tmp_path, "dp", **dp))
    assert all("privacy/epsilon" in r and r["server/step_norm"] > 0 for r in recs)


def test_fedprox_reaches_sfprompts_split_clients(tmp_path: Path) -> None:
    """The split client's own loop adds the proximal gradient too: with SGD and mu = 1 / lr the
    prompts and tail end nearer the global ones than without it."""
    sfprompt = QUICKSTART.parent / "sfprompt" / "amazon_reviews.yaml"
    sgd = {"federation.rounds": 1, "train.optimizer": "sgd", "train.lr": 0.5, "train.local_steps": 3,
           "server.torch_threads": 1, "pruning.enabled": False, "local_loss.enabled": False}  # fmt: skip

    def delta(name: str, **extra: object) -> float:
        cfg = load_config(sfprompt, tiny_overrides(**sgd, **extra))
        run = start_run(cfg, out=str(tmp_path / name), backend=LocalBackend())
        return run_records(run)[0]["server/delta_norm"]

    avg = delta("avg")
    assert delta("prox", **{"federation.strategy": "fedprox", "strategy.mu": 2.0}) < 0.6 * avg
