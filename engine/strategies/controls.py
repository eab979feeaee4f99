"""Clients' state that lives with the clients: SCAFFOLD's control variates on disk, one file per
(client, round that produced it), under the run directory (`controls/<client>/<round>.safetensors`).
The driver loads one per task and never holds all N; versions newer than the checkpoint a run resumes
from are removed, and versions no kept checkpoint needs are pruned."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from engine.ledger import deserialize_state, serialize_state

State = dict[str, np.ndarray]


class ControlStore:
    """The clients' control variates on disk, one file per (client, round that produced it)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.touched: set[int] = set()  # clients written since the last prune

    def _dir(self, client: int) -> Path:
        return self.root / f"{client:08d}"

    def _versions(self, client: int) -> list[int]:
        d = self._dir(client)
        if not d.is_dir():
            return []
        return sorted(int(p.stem) for p in d.glob("*.safetensors"))

    def load(self, client: int, before_round: int) -> State | None:
        """The client's newest variate from a round before `before_round`; None if it has none."""
        older = [v for v in self._versions(client) if v < before_round]
        if not older:
            return None
        return deserialize_state((self._dir(client) / f"{older[-1]:05d}.safetensors").read_bytes())

    def save(self, client: int, round: int, state: State) -> None:
        d = self._dir(client)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{round:05d}.tmp"
        tmp.write_bytes(serialize_state(state))
        os.replace(tmp, d / f"{round:05d}.safetensors")
        self.touched.add(client)

    def cut_back(self, last_round: int) -> None:
        """Forget every version written after `last_round` (a run resuming from that round)."""
        if last_round <= 0:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        if not self.root.is_dir():
            return
        for d in self.root.iterdir():
            for p in d.glob("*.safetensors"):
                if int(p.stem) > last_round:
                    p.unlink()
            for p in d.glob(".*.tmp"):
                p.unlink()

    def prune(self, keep_from: int) -> None:
        """Drop versions no checkpoint from round `keep_from` on can need: of those at or before
        it, only the newest stays (for the clients written since the last prune)."""
        for client in sorted(self.touched):
            old = [v for v in self._versions(client) if v <= keep_from]
            for v in old[:-1]:
                (self._dir(client) / f"{v:05d}.safetensors").unlink()
        self.touched.clear()
