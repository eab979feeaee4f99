"""DP-FedAvg: clipping and noise by hand, the accountant against Opacus, a private run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from actors.launch import start_run
from engine.backend import LocalBackend
from engine.config import load_config
from engine.privacy import clip_update, dp_aggregate, epsilon
from fedray.cli import main
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def test_clip_scales_the_whole_update_to_the_bound() -> None:
    clipped, norm = clip_update({"a": np.array([3.0, 0.0]), "b": np.array([4.0])}, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0])
    np.testing.assert_allclose(clipped["b"], [0.8])
    same, _ = clip_update({"a": np.array([0.3, 0.4])}, 1.0)  # norm 0.5 <= 1: unchanged
    np.testing.assert_allclose(same["a"], [0.3, 0.4])


def test_aggregate_by_hand_without_noise() -> None:
    g = {"w": np.zeros(2, dtype=np.float32)}
    clients = [{"w": np.array([3.0, 4.0], np.float32)}, {"w": np.array([0.0, 2.0], np.float32)}]
    out, stats = dp_aggregate(g, clients, 1.0, 0.0, 2, np.random.default_rng(0))
    np.testing.assert_allclose(out["w"], [0.3, 0.9], rtol=1e-6)  # ([.6, .8] + [0, 1]) / 2
    assert stats["privacy/clipped_fraction"] == 1.0 and stats["privacy/update_norm_mean"] == 3.5
    # a bound no update reaches: plain unweighted FedAvg
    out, _ = dp_aggregate(g, clients, 1e9, 0.0, 2, np.random.default_rng(0))
    np.testing.assert_allclose(out["w"], [1.5, 3.0], rtol=1e-6)


def test_noise_has_the_promised_scale_and_is_seeded() -> None:
    g = {"w": np.zeros(20_000)}
    args = (g, [{"w": np.zeros(20_000)}] * 4, 0.5, 2.0, 4)
    a, _ = dp_aggregate(*args, np.random.default_rng(3))
    b, _ = dp_aggregate(*args, np.random.default_rng(3))
    assert np.array_equal(a["w"], b["w"])
    assert np.std(a["w"]) == pytest.approx(2.0 * 0.5 / 4, rel=0.03)  # z * clip / m


def test_epsilon_is_opacus_rdp_and_monotone() -> None:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(10):
        acc.step(noise_multiplier=1.1, sample_rate=0.3)
    assert epsilon(1.1, 0.3, 10, 1e-5) == pytest.approx(acc.get_epsilon(1e-5))
    assert epsilon(1.1, 0.3, 20, 1e-5) > epsilon(1.1, 0.3, 10, 1e-5)
    assert epsilon(2.0, 0.3, 10, 1e-5) < epsilon(1.1, 0.3, 10, 1e-5)
    assert epsilon(0.0, 0.3, 10, 1e-5) == float("inf")


def test_a_private_run_reports_its_epsilon_and_is_deterministic(tmp_path: Path) -> None:
    over = tiny_overrides(**{"privacy.dp": "true", "privacy.clip_norm": 0.5,
                             "privacy.noise_multiplier": 1.0})  # fmt: skip
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", over)
    runs = [start_run(cfg, out=str(tmp_path / n), backend=LocalBackend()) for n in ("a", "b")]
    recs = [[json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in runs]
    eps = [r["privacy/epsilon"] for r in recs[0]]
    q = cfg.federation.clients_per_round / cfg.federation.num_clients
    assert eps == [pytest.approx(epsilon(1.0, q, n, 1e-5)) for n in (1, 2, 3)]
    drop = lambda rs: [{k: v for k, v in r.items() if "wall" not in k} for r in rs]  # noqa: E731
    assert drop(recs[0]) == drop(recs[1])


def test_dp_outside_fedavg_exits_2(tmp_path: Path, capsys) -> None:
    sf = ROOT / "configs" / "sfprompt" / "amazon_reviews.yaml"
    assert (
        main(
            [
                "run",
                str(sf),
                *tiny_overrides(**{"privacy.dp": "true"}),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith("error: privacy.dp:")


def test_poisson_sampling_draws_each_client_with_probability_q() -> None:
    from engine.rounds import sample_clients

    draws = [sample_clients(50, 5, seed=0, round=r, poisson=True) for r in range(4000)]
    assert np.array_equal(draws[7], sample_clients(50, 5, seed=0, round=7, poisson=True))
    sizes = np.array([len(d) for d in draws])
    assert sizes.mean() == pytest.approx(5, rel=0.03) and len(set(sizes)) > 5  # varies
    assert (sizes == 0).any()  # P(no client) = 0.9^50 = 0.5%: some of 4,000 rounds are empty
    hits = np.bincount(np.concatenate(draws), minlength=50) / len(draws)
    assert np.abs(hits - 0.1).max() < 0.02  # every client near q = 5 / 50
    assert all(np.all(np.diff(d) > 0) for d in draws[:50])  # sorted, distinct


def test_an_empty_private_round_still_adds_its_noise() -> None:
    g = {"w": np.zeros(20_000)}
    out, stats = dp_aggregate(g, [], 0.5, 2.0, 4, np.random.default_rng(1))
    assert np.std(out["w"]) == pytest.approx(2.0 * 0.5 / 4, rel=0.03)
    assert stats["privacy/clipped_fraction"] == 0.0


def test_a_poisson_private_run_varies_its_clients_and_keeps_the_accounting(tmp_path: Path) -> None:
    over = tiny_overrides(**{"privacy.dp": "true", "federation.sampling": "poisson",
                             "federation.rounds": 4, "privacy.noise_multiplier": 1.0})  # fmt: skip
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", over)
    run = start_run(cfg, out=str(tmp_path / "p"), backend=LocalBackend())
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    from engine.rounds import sample_clients

    for r in recs:  # the round's clients are the seeded Poisson draw
        assert r["clients/sampled"] == len(sample_clients(6, 3, cfg.seed, r["round"], True))
        assert r["privacy/epsilon"] == pytest.approx(epsilon(1.0, 0.5, r["round"], 1e-5))
    assert len({r["clients/sampled"] for r in recs}) > 1


def test_poisson_sampling_refuses_oversampling() -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "quickstart.yaml", tiny_overrides(**{
            "federation.sampling": "poisson", "federation.oversample": 1.5}))  # fmt: skip
    assert err.value.key == "federation.oversample" and "poisson" in err.value.message
