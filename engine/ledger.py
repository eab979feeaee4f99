"""The communication/compute ledger: serialized payloads and the bytes and FLOPs each client spends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import safetensors.numpy

Direction = Literal["up", "down"]
_DIRECTIONS = ("up", "down")


def serialize_state(state: Mapping[str, np.ndarray]) -> bytes:
    """The bytes that cross a client boundary for `state` (safetensors; key order does not matter)."""
    # safetensors lays tensors out in a canonical order, so equal states give equal bytes. It copies
    # raw memory from the data pointer, so a non-contiguous view (e.g. a transpose) would come back
    # scrambled: make every array C-contiguous first (a no-op for arrays that already are).
    return safetensors.numpy.save({k: np.asarray(v, order="C") for k, v in state.items()})


def deserialize_state(blob: bytes) -> dict[str, np.ndarray]:
    """Inverse of `serialize_state`: fresh, writable arrays, keyed in sorted order (safetensors hands
    them back in a different order on every call, and a sum over a state's tensors must not depend
    on it)."""
    return dict(sorted(safetensors.numpy.load(blob).items()))


@dataclass(frozen=True)
class Transfer:
    """One message across a client boundary: `up` is client -> server, `down` is server -> client."""

    client_id: int
    round: int
    direction: Direction
    kind: str  # what was sent: "params", "activations", "gradients", "logits", ...
    nbytes: int


@dataclass
class _ClientRound:
    up: int = 0
    down: int = 0
    flops: float = 0.0
    peak_memory_bytes: int = 0


class Ledger:
    """Accumulates every transfer and the per-client compute of a run; JSON-able for checkpoints."""

    def __init__(self) -> None:
        self.transfers: list[Transfer] = []
        self.compute: list[
            tuple[int, int, float, int]
        ] = []  # (round, client_id, flops, peak bytes)
        self._rounds: dict[int, dict[int, _ClientRound]] = {}
        self._cum = {"up": 0, "down": 0}

    def _entry(self, round: int, client_id: int) -> _ClientRound:
        return self._rounds.setdefault(int(round), {}).setdefault(int(client_id), _ClientRound())

    def record(
        self, round: int, client_id: int, direction: str, kind: str, payload: bytes | int
    ) -> int:
        """Count one message; `payload` is the serialized bytes sent (or their length). Returns nbytes."""
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        nbytes = payload if isinstance(payload, int) else memoryview(payload).nbytes
        if nbytes < 0:
            raise ValueError(f"payload size must be >= 0, got {nbytes}")
        self.transfers.append(Transfer(int(client_id), int(round), direction, kind, nbytes))  # type: ignore[arg-type]
        entry = self._entry(round, client_id)
        setattr(entry, direction, getattr(entry, direction) + nbytes)
        self._cum[direction] += nbytes
        return nbytes

    def record_compute(
        self, round: int, client_id: int, flops: float, peak_memory_bytes: int
    ) -> None:
        """Add a client's FLOPs for the round; its peak memory is the max over what was recorded."""
        self.compute.append((int(round), int(client_id), float(flops), int(peak_memory_bytes)))
        entry = self._entry(round, client_id)
        entry.flops += float(flops)
        entry.peak_memory_bytes = max(entry.peak_memory_bytes, int(peak_memory_bytes))

    def round_totals(self, round: int) -> dict[str, Any]:
        """{"bytes_up", "bytes_down", "per_client": {cid: {"up", "down", "flops", "peak_memory_bytes"}}}."""
        clients = self._rounds.get(int(round), {})
        per_client = {cid: asdict(e) for cid, e in sorted(clients.items())}
        return {
            "bytes_up": sum(e.up for e in clients.values()),
            "bytes_down": sum(e.down for e in clients.values()),
            "per_client": per_client,
        }

    def rounds(self) -> list[int]:
        """Rounds with anything recorded, ascending."""
        return sorted(self._rounds)

    def total_bytes(self, direction: str | None = None) -> int:
        """Bytes over the whole run, one direction or both."""
        return self._cum[direction] if direction is not None else self.cumulative_bytes()

    def bytes_by_kind(self) -> dict[str, int]:
        """Total bytes per "<direction>/<kind>" (trainable_state, activations, gradients...)."""
        out: dict[str, int] = {}
        for t in self.transfers:
            key = f"{t.direction}/{t.kind}"
            out[key] = out.get(key, 0) + t.nbytes
        return dict(sorted(out.items()))

    def cumulative_bytes(self) -> int:
        """Bytes up + down over the whole run."""
        return self._cum["up"] + self._cum["down"]

    def state_dict(self) -> dict[str, Any]:
        """JSON-able snapshot (the transfers and the compute records)."""
        compute = [list(c) for c in self.compute]
        transfers = [[t.round, t.client_id, t.direction, t.kind, t.nbytes] for t in self.transfers]
        return {"transfers": transfers, "compute": compute}

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> Ledger:
        """Rebuild a ledger saved by `state_dict` (e.g. after a JSON round trip)."""
        ledger = cls()
        for r, cid, direction, kind, nbytes in d["transfers"]:
            ledger.record(r, cid, direction, kind, int(nbytes))
        for r, cid, flops, peak in d["compute"]:
            ledger.record_compute(r, cid, flops, peak)
        return ledger
