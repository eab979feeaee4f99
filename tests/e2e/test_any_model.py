"""A model fedray has never seen, by path, through the quickstart on Ray: a sentence encoder saved
with save_pretrained (tiny random MPNet) whose 1_Pooling/config.json declares mean pooling."""

from __future__ import annotations

from pathlib import Path

from actors.launch import start_run
from engine.backend import LocalBackend
from engine.config import load_config
from fedray.cli import main
from tests.conftest import run_records, tiny_overrides, without_wall
from tests.zoo import save_tiny

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def test_quickstart_trains_a_saved_mean_pooling_mpnet_by_path(ray_session, tmp_path) -> None:
    mpnet = save_tiny("mpnet", tmp_path / "my-mpnet", mean_pooling=True)
    ov = tiny_overrides(**{"model.name": str(mpnet), "federation.rounds": 2})
    assert main(["run", str(QUICKSTART), *ov, "--out", str(tmp_path / "ray")]) == 0
    ray = run_records(tmp_path / "ray")
    assert [r["round"] for r in ray] == [1, 2] and all(0 <= r["eval/accuracy"] <= 1 for r in ray)
    # pooling: auto followed the declaration (the same numbers as mean, in process), not cls
    for pooling, same in (("mean", True), ("cls", False)):
        cfg = load_config(QUICKSTART, [*ov, f"model.pooling={pooling}"])
        local = start_run(cfg, out=str(tmp_path / pooling), backend=LocalBackend())
        assert (without_wall(run_records(local)) == without_wall(ray)) is same, pooling
