"""Strategies: hand-computed server updates (two clients, two tensors), FedProx's gradient, the
slots' checkpoint round trip and the config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.aggregate import fedavg, fedavg_weights
from engine.config import validate_config
from engine.errors import ConfigError
from engine.strategies import STRATEGIES, ServerOptimizer, get_strategy, resolve
from engine.train import proximal_grad

F32 = np.float32
GLOBAL = {"a": np.array([1.0, 2.0], F32), "b": np.array([[0.5]], F32)}
# Two clients with 3 and 1 samples: the weighted mean is a = [1.5, 2.5], b = 1.25, so the
# pseudo-gradient of round 1 is delta_a = [0.5, 0.5], delta_b = 0.75.
CLIENTS = [
    {"a": np.array([2.0, 2.0], F32), "b": np.array([[1.5]], F32)},
    {"a": np.array([0.0, 4.0], F32), "b": np.array([[0.5]], F32)},
]
DELTA2 = {"a": [-0.5, 0.5], "b": [0.25]}  # round 2: aggregate = global after round 1 + DELTA2


def _aggregate() -> dict[str, np.ndarray]:
    return fedavg(CLIENTS, fedavg_weights([3, 1], weighted=True))


def _two_rounds(name: str, **given: float) -> tuple[dict, dict]:
    opt = ServerOptimizer(*resolve(name, given))
    x1, _ = opt.step(GLOBAL, _aggregate())
    agg2 = {k: x1[k] + np.array(DELTA2[k], F32).reshape(x1[k].shape) for k in x1}
    x2, _ = opt.step(x1, agg2)
    return x1, x2


def _flat(state: dict[str, np.ndarray]) -> list[float]:
    return [*state["a"].ravel().tolist(), *state["b"].ravel().tolist()]


def test_fedavg_takes_the_weighted_mean_bit_for_bit() -> None:
    agg = _aggregate()
    np.testing.assert_array_equal(agg["a"], [1.5, 2.5])
    np.testing.assert_array_equal(agg["b"], [[1.25]])
    opt = ServerOptimizer(*resolve("fedavg", {}))
    out, record = opt.step(GLOBAL, agg)
    assert out is agg and opt.state_dict() == {}
    assert record["server/delta_norm"] == pytest.approx(math.sqrt(0.25 + 0.25 + 0.75**2))


def test_fedavgm_momentum_by_hand() -> None:
    x1, x2 = _two_rounds("fedavgm", server_lr=0.1, momentum=0.9)
    # round 1: m = delta; x += 0.1 * m
    assert _flat(x1) == pytest.approx([1.05, 2.05, 0.575])
    # round 2: m = 0.9 * m + delta2 = [-0.05, 0.95], 0.925; x += 0.1 * m
    assert _flat(x2) == pytest.approx([1.045, 2.145, 0.6675])


def _adaptive_by_hand(second, beta1: float, lr: float = 0.1, tau: float = 1e-3) -> list[float]:
    """Round 1 of Reddi et al.'s Algorithm 2 for one coordinate per delta, in scalars."""
    out = []
    for x, d in ((1.0, 0.5), (2.0, 0.5), (0.5, 0.75)):
        m = (1 - beta1) * d
        v = second(tau * tau, d * d)
        out.append(x + lr * m / (math.sqrt(v) + tau))
    return out


def test_fedadam_by_hand() -> None:
    x1, _ = _two_rounds("fedadam", server_lr=0.1)
    want = _adaptive_by_hand(lambda v, d2: 0.99 * v + 0.01 * d2, beta1=0.9)
    assert _flat(x1) == pytest.approx(want, rel=1e-6)
    assert want[0] == pytest.approx(1.0980201, rel=1e-6)  # 0.1 * 0.05 / (0.0500099 + 0.001)


def test_fedyogi_by_hand() -> None:
    x1, _ = _two_rounds("fedyogi", server_lr=0.1)
    # v = tau^2 - 0.01 * d^2 * sign(tau^2 - d^2) = tau^2 + 0.01 d^2 (delta^2 > tau^2)
    want = _adaptive_by_hand(lambda v, d2: v - 0.01 * d2 * math.copysign(1, v - d2), beta1=0.9)
    assert _flat(x1) == pytest.approx(want, rel=1e-6)


def test_fedadagrad_by_hand_over_two_rounds() -> None:
    x1, x2 = _two_rounds("fedadagrad", server_lr=0.1)
    want1 = _adaptive_by_hand(lambda v, d2: v + d2, beta1=0.0)
    assert _flat(x1) == pytest.approx(want1, rel=1e-6)
    # round 2 (no momentum): v = tau^2 + d1^2 + d2^2, x += 0.1 * d2 / (sqrt(v) + tau)
    want2 = [
        x + 0.1 * d2 / (math.sqrt(1e-6 + d1 * d1 + d2 * d2) + 1e-3)
        for x, d1, d2 in zip(want1, (0.5, 0.5, 0.75), (-0.5, 0.5, 0.25), strict=True)
    ]
    assert _flat(x2) == pytest.approx(want2, rel=1e-6)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_slots_round_trip_through_a_checkpoint(name: str) -> None:
    """Resuming from the saved slots gives the uninterrupted second round, bit for bit."""
    _, x2 = _two_rounds(name)
    first = ServerOptimizer(*resolve(name, {}))
    x1, _ = first.step(GLOBAL, _aggregate())
    saved = first.state_dict()
    assert saved and all(k.startswith("strategy/") for k in saved)
    resumed = ServerOptimizer(*resolve(name, {}))
    resumed.load_state_dict(saved)
    agg2 = {k: x1[k] + np.array(DELTA2[k], F32).reshape(x1[k].shape) for k in x1}
    again, _ = resumed.step(x1, agg2)
    for k in x2:
        np.testing.assert_array_equal(again[k], x2[k])
        assert again[k].dtype == np.float32


def test_proximal_gradient_is_mu_times_the_drift() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    w.grad = torch.tensor([0.5, 0.5])
    proximal_grad([w], [torch.tensor([0.0, 0.0])], mu=0.1)
    # d/dw (0.1 / 2) * ||w - 0||^2 = 0.1 * w = [0.1, -0.2]
    assert w.grad.tolist() == pytest.approx([0.6, 0.3])


def test_every_registered_strategy_documents_its_keys() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    for name in STRATEGIES:
        assert f"`{name}`" in doc, name
        for key in get_strategy(name).defaults:
            assert f"`strategy.{key}`" in doc, key


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"federation": {"strategy": "fedsgd"}}, "federation.strategy", "fedadam"),
        ({"strategy": {"mu": 0.1}}, "strategy.mu", "fedprox"),
        ({"federation": {"strategy": "fedadam"}, "strategy": {"momentum": 0.5}}, "strategy.momentum", "fedavgm"),
        ({"federation": {"strategy": "fedprox"}, "strategy": {"mu": -1}}, "strategy.mu", "greater"),
        ({"federation": {"strategy": "fedadam"}, "strategy": {"server_lr": 0}}, "strategy.server_lr", "greater"),
        ({"federation": {"strategy": "fedyogi"}, "strategy": {"beta2": 1.0}}, "strategy.beta2", "less than 1"),
        ({"federation": {"strategy": "fedavgm"}, "strategy": {"momentum": -0.1}}, "strategy.momentum", "greater"),
        ({"algorithm": "centralized", "federation": {"strategy": "fedadam"}}, "federation.strategy", "centralized"),
    ],
)  # fmt: skip
def test_bad_strategy_settings_name_the_key(raw: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    assert err.value.key == key and words in err.value.message


def test_defaults_and_overrides() -> None:
    cfg = validate_config({"federation": {"strategy": "fedadam"}, "strategy": {"tau": 0.01}})
    strategy, params = resolve(cfg.federation.strategy, cfg.strategy.model_dump())
    assert params == {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 0.01}
    assert not strategy.proximal and get_strategy("fedprox").proximal


# ------------------------------------------------------------------------------ SCAFFOLD


def test_scaffold_control_variates_by_hand(tmp_path) -> None:
    """Option II with K = 2 steps at lr 0.5 (K * lr = 1): c_i+ = c_i - c + (x - y)."""
    from engine.strategies import ControlStore

    store = ControlStore(tmp_path / "controls")
    opt = ServerOptimizer(*resolve("scaffold", {}), controls=store)
    x = {"a": np.array([1.0, 2.0], F32), "b": np.array([[0.5]], F32)}
    # round 1: c = 0 and every c_i = 0, so the correction is zero
    assert _flat(_load(opt.correction(0, 1, x))) == [0.0, 0.0, 0.0]
    accepted = [(0, CLIENTS[0], 2), (1, CLIENTS[1], 2)]
    record = opt.commit_controls(1, accepted, x, lr=0.5, num_clients=4)
    # c_0 = x - y_0 = [-1, 0], -1;  c_1 = x - y_1 = [1, -2], 0;  c = (c_0 + c_1) / 4
    assert _flat(store.load(0, 2)) == [-1.0, 0.0, -1.0]
    assert _flat(store.load(1, 2)) == [1.0, -2.0, 0.0]
    c = [0.0, -0.5, -0.25]
    assert record["server/control_norm"] == pytest.approx(math.sqrt(0.25 + 0.0625))
    # round 2, client 0: correction c - c_0; client 3 (never trained): c - 0
    assert _flat(_load(opt.correction(0, 2, x))) == pytest.approx([1.0, -0.5, 0.75])
    assert _flat(_load(opt.correction(3, 2, x))) == pytest.approx(c)
    # round 2, client 0 again with K * lr = 1 and y = x: c_0+ = c_0 - c
    opt.commit_controls(2, [(0, x, 4)], x, lr=0.25, num_clients=4)
    assert _flat(store.load(0, 3)) == pytest.approx([-1.0, 0.5, -0.75])
    assert _flat(store.load(0, 2)) == [-1.0, 0.0, -1.0]  # round 2 still reads round 1's version
    # c stays the mean of all four clients' variates: [0, -0.375, -0.1875]
    mean = np.mean(
        [_flat(store.load(i, 3)) if store.load(i, 3) else [0.0] * 3 for i in range(4)], 0
    )
    assert _flat(_load(opt.correction(3, 3, x))) == pytest.approx(mean.tolist())


def test_scaffold_store_cut_back_and_prune(tmp_path) -> None:
    from engine.strategies import ControlStore

    store = ControlStore(tmp_path / "controls")
    for rnd in (1, 3, 4):
        store.save(7, rnd, {"a": np.full(2, rnd, F32)})
    store.prune(keep_from=3)  # the checkpoint of round 3 needs version 3, not 1
    assert store._versions(7) == [3, 4]
    assert store.load(7, 4)["a"].tolist() == [3.0, 3.0]  # round 4 reads what round 3 wrote
    store.cut_back(3)  # resuming from round 3: version 4 is redone
    assert store._versions(7) == [3]
    store.cut_back(0)
    assert store.load(7, 9) is None


def _load(blob: bytes | None) -> dict[str, np.ndarray]:
    from engine.ledger import deserialize_state

    assert blob is not None
    return deserialize_state(blob)
