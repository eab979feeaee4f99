"""W&B tracking: an offline run is written inside the run directory, with metrics and the artifact."""

from __future__ import annotations

from engine.config import validate_config
from engine.tracking import Tracker
from engine.versions import stack_versions


def test_offline_run_is_written_in_the_run_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = validate_config({"name": "t", "wandb": {"mode": "offline"}})
    tracker = Tracker(cfg, tmp_path)
    assert tracker.run.config["versions"] == stack_versions()  # the stack the run used
    assert tracker.run.config["name"] == "t"
    tracker.log({"round": 1, "eval/accuracy": 0.5, "clients/failed_reasons": {}})
    tracker.finish({"wall_s": 1.0}, b"\x00" * 16)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "no W&B event file written"
    assert (tmp_path / "final_trainable.safetensors").read_bytes() == b"\x00" * 16


def test_disabled_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = validate_config({"wandb": {"mode": "offline"}})
    tracker = Tracker(cfg, tmp_path)
    tracker.log({"round": 1})
    tracker.finish({}, b"")
    assert not any(tmp_path.iterdir())
