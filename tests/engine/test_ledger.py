"""Tests for engine/ledger.py: payload byte counts, serialization round trips, totals, state_dict."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from engine.ledger import Ledger, Transfer, deserialize_state, serialize_state


def test_payload_length_is_header_plus_data() -> None:
    blob = serialize_state({"a": np.zeros((2, 3), dtype=np.float32)})
    (header_len,) = struct.unpack("<Q", blob[:8])  # safetensors: u64 little-endian header size
    header = json.loads(blob[8 : 8 + header_len])
    assert header["a"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert len(blob) == 8 + header_len + 2 * 3 * 4


def test_round_trip_is_exact_and_order_independent() -> None:
    rng = np.random.default_rng(0)
    state = {
        "w": rng.standard_normal((4, 5)).astype(np.float32),
        "b": rng.integers(0, 9, size=(3,), dtype=np.int64),
        "t": rng.standard_normal((3, 2)).T,  # non-contiguous float64 view
        "s": np.float32(2.5),  # 0-d stays 0-d
    }
    blob = serialize_state(state)
    assert serialize_state(dict(reversed(list(state.items())))) == blob
    back = deserialize_state(blob)
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == np.shape(v)
        assert np.array_equal(back[k], v)
    back["w"][0, 0] = 1.0  # arrays handed back are writable


def test_record_counts_bytes_of_payload_or_int() -> None:
    ledger = Ledger()
    blob = serialize_state({"a": np.zeros(10, dtype=np.float32)})
    assert ledger.record(0, 3, "down", "params", blob) == len(blob)
    assert ledger.record(0, 3, "up", "params", 100) == 100
    assert ledger.transfers == [
        Transfer(3, 0, "down", "params", len(blob)),
        Transfer(3, 0, "up", "params", 100),
    ]
    with pytest.raises(ValueError, match="direction"):
        ledger.record(0, 3, "sideways", "params", 1)


def _filled() -> Ledger:
    ledger = Ledger()
    # round 0: clients 1 and 2; round 1: client 2 only (split learning: activations + grads too)
    ledger.record(0, 1, "down", "params", 1000)
    ledger.record(0, 2, "down", "params", 1000)
    ledger.record(0, 1, "up", "params", 400)
    ledger.record(0, 2, "up", "params", 300)
    ledger.record_compute(0, 1, flops=5e6, peak_memory_bytes=2000)
    ledger.record_compute(0, 2, flops=7e6, peak_memory_bytes=3000)
    ledger.record(1, 2, "down", "params", 1000)
    ledger.record(1, 2, "up", "activations", 64)
    ledger.record(1, 2, "down", "gradients", 64)
    ledger.record_compute(1, 2, flops=1e6, peak_memory_bytes=500)
    ledger.record_compute(1, 2, flops=2e6, peak_memory_bytes=800)
    return ledger


def test_totals_over_clients_and_rounds() -> None:
    ledger = _filled()
    assert ledger.round_totals(0) == {
        "bytes_up": 700,
        "bytes_down": 2000,
        "per_client": {
            1: {"up": 400, "down": 1000, "flops": 5e6, "peak_memory_bytes": 2000},
            2: {"up": 300, "down": 1000, "flops": 7e6, "peak_memory_bytes": 3000},
        },
    }
    # flops add up within a round; peak memory is the max, not the sum
    assert ledger.round_totals(1) == {
        "bytes_up": 64,
        "bytes_down": 1064,
        "per_client": {2: {"up": 64, "down": 1064, "flops": 3e6, "peak_memory_bytes": 800}},
    }
    assert ledger.round_totals(7) == {"bytes_up": 0, "bytes_down": 0, "per_client": {}}
    assert ledger.rounds() == [0, 1]
    assert ledger.total_bytes("up") == 764
    assert ledger.total_bytes("down") == 3064
    assert ledger.cumulative_bytes() == 3828 == ledger.total_bytes()


def test_state_dict_round_trip_through_json() -> None:
    ledger = _filled()
    restored = Ledger.from_state_dict(json.loads(json.dumps(ledger.state_dict())))
    assert restored.transfers == ledger.transfers
    assert restored.compute == ledger.compute
    assert restored.cumulative_bytes() == ledger.cumulative_bytes()
    for r in (0, 1):
        assert restored.round_totals(r) == ledger.round_totals(r)
    # a restored ledger keeps counting from where it was
    restored.record(2, 1, "up", "params", 10)
    assert restored.cumulative_bytes() == ledger.cumulative_bytes() + 10


def test_bytes_by_kind_sums_each_direction_and_kind():
    led = Ledger()
    led.record(1, 0, "up", "activations", 100)
    led.record(1, 1, "up", "activations", 50)
    led.record(1, 0, "down", "gradients", 30)
    led.record(2, 0, "up", "trainable_state", b"abcd")
    assert led.bytes_by_kind() == {
        "down/gradients": 30,
        "up/activations": 150,
        "up/trainable_state": 4,
    }
    assert sum(led.bytes_by_kind().values()) == led.total_bytes()
    assert Ledger.from_state_dict(led.state_dict()).bytes_by_kind() == led.bytes_by_kind()


def test_a_deserialized_state_comes_back_in_one_order() -> None:
    """safetensors returns tensors in a different order per call; sums over a state (update norms,
    SCAFFOLD's control norm) would then differ in the last bits between a run and its resume."""
    import numpy as np

    from engine.ledger import deserialize_state, serialize_state

    blob = serialize_state({f"t{i}": np.full(1, i, np.float32) for i in range(20)})
    orders = {tuple(deserialize_state(blob)) for _ in range(10)}
    assert orders == {tuple(sorted(f"t{i}" for i in range(20)))}
