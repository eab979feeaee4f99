"""Checkpoints: atomic folders, pruning, checksum verification and fallback to the previous good one."""

from __future__ import annotations

import numpy as np
import pytest

from engine.checkpoint import (
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from engine.ledger import deserialize_state, serialize_state
from engine.rundir import append_metrics, read_metrics, truncate_metrics


def _blob(v: float) -> bytes:
    return serialize_state({"w": np.full((2, 2), v, dtype=np.float32)})


def test_round_trip_and_pruning(tmp_path) -> None:
    for r in (1, 2, 3):
        save_checkpoint(tmp_path, r, _blob(r), {"note": r}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round_00002", "round_00003"]
    blob, meta = load_checkpoint(tmp_path / "round_00003")
    assert meta["round"] == 3 and meta["note"] == 3
    np.testing.assert_array_equal(deserialize_state(blob)["w"], np.full((2, 2), 3.0))
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers


def test_corrupted_checkpoint_is_refused_and_previous_used(tmp_path) -> None:
    save_checkpoint(tmp_path, 1, _blob(1), {}, keep=5)
    save_checkpoint(tmp_path, 2, _blob(2), {}, keep=5)
    state = tmp_path / "round_00002" / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(tmp_path / "round_00002")
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        path, blob, meta = latest_good_checkpoint(tmp_path)
    assert path.name == "round_00001" and meta["round"] == 1


def test_metrics_truncation_drops_rounds_after_checkpoint_and_cut_lines(tmp_path) -> None:
    for r in (1, 2, 3):
        append_metrics(tmp_path, {"round": r})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"round": 4, "cut')  # a kill mid-write
    assert [m["round"] for m in read_metrics(tmp_path)] == [1, 2, 3]
    assert [m["round"] for m in truncate_metrics(tmp_path, 2)] == [1, 2]
    assert [m["round"] for m in read_metrics(tmp_path)] == [1, 2]
