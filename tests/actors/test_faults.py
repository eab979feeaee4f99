"""faults.*: killed client workers are replaced and their tasks retried (or counted), delays hit
the task timeout instead of hanging, and a killed server is restarted with the round redone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.launch import start_run
from engine.config import load_config
from engine.errors import FedRayRuntimeError
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "configs" / "quickstart.yaml"
SFPROMPT = ROOT / "configs" / "sfprompt" / "amazon_reviews.yaml"
TWO = {"resources.num_workers": 2, "resources.client_num_cpus": 0.5}


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _same(a: list[dict], b: list[dict], drop: tuple[str, ...]) -> bool:
    def strip(rs: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if "wall" not in k and k not in drop} for r in rs]

    return strip(a) == strip(b)


@pytest.fixture(scope="module")
def clean(ray_session, tmp_path_factory) -> list[dict]:
    cfg = load_config(QUICK, tiny_overrides(**TWO))
    return _records(start_run(cfg, out=str(tmp_path_factory.mktemp("f") / "clean")))


def test_killed_workers_are_replaced_and_retried_exactly(clean, tmp_path: Path) -> None:
    cfg = load_config(QUICK, tiny_overrides(**TWO, **{"faults.client_kill_prob": 0.4}))
    recs = _records(start_run(cfg, out=str(tmp_path / "kill")))
    assert sum(r["clients/retried"] for r in recs) >= 1  # some workers really died
    assert all(r["clients/failed"] == 0 for r in recs)
    assert recs[-1]["clients/workers_replaced"] >= 1
    assert _same(
        recs, clean, ("clients/retried", "clients/workers_replaced")
    )  # the retried tasks gave the same updates


def test_without_retries_killed_clients_count_as_failed(clean, tmp_path: Path) -> None:
    over = {"faults.client_kill_prob": 0.4, "faults.client_retries": 0}
    recs = _records(start_run(load_config(QUICK, tiny_overrides(**TWO, **over)),
                              out=str(tmp_path / "nokill")))  # fmt: skip
    failed = sum(r["clients/failed"] for r in recs)
    assert failed >= 1 and all(r["clients/retried"] == 0 for r in recs)
    for r in recs:
        assert r["clients/completed"] + r["clients/failed"] == r["clients/sampled"]
        for why in r.get("clients/failed_reasons", {}).values():
            assert "Actor" in why and "died" in why.lower() or "exit" in why.lower(), why


def test_a_delayed_client_hits_the_task_timeout_instead_of_hanging(ray_session, tmp_path) -> None:
    over = {
        "faults.client_delay_prob": 1.0,
        "faults.client_delay_s": 30,
        "resources.task_timeout_s": 3,
    }
    cfg = load_config(QUICK, tiny_overrides(**TWO, **over))
    with pytest.raises(FedRayRuntimeError, match="task_timeout_s=3"):
        start_run(cfg, out=str(tmp_path / "slow"))


def test_server_kill_round_restarts_the_body_server_and_redoes_the_round(
    ray_session, tmp_path
) -> None:
    tiny = {"split.tail_layers": 1, "split.prompt_length": 4, "server.num_cpus": 0.5,
            "server.torch_threads": 1, "resources.num_workers": 1}  # fmt: skip
    base = start_run(load_config(SFPROMPT, tiny_overrides(**tiny)), out=str(tmp_path / "a"))
    cfg = load_config(SFPROMPT, tiny_overrides(**tiny, **{"faults.server_kill_round": 2}))
    recs = _records(start_run(cfg, out=str(tmp_path / "b")))
    assert [r["server/restarts"] for r in recs] == [0, 1, 0]
    assert _same(recs, _records(base), ("server/restarts",))
