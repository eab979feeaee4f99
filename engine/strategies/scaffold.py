"""SCAFFOLD (Karimireddy et al., 2020), option II: control variates correct the clients' drift.

Client i keeps c_i (zero at first), the server keeps c. Every local step uses the gradient
g - c_i + c; after K steps at learning rate lr the client's new variate is
    c_i+ = c_i - c + (x - y) / (K * lr)
(x: the global state it received, y: its trained state), and it uploads y and dc_i = c_i+ - c_i.
The server steps x by server_lr times the aggregate's delta and sets c += (1 / N) * sum(dc_i) over the
round's accepted clients, which keeps c the mean of all N clients' c_i. A client's c downloads and
dc_i uploads are counted by the ledger (`control_variate`): SCAFFOLD doubles both directions.

The clients' variates live where a deployment keeps them, with each client: one file per client
and version under the run directory (`controls/<client>/<round>.safetensors`), loaded one per task;
the driver never holds all N. Versions newer than the checkpoint a run resumes from are removed, and
versions no kept checkpoint needs are pruned. Option II assumes plain SGD steps; with AdamW
(`train.optimizer`) the same formula is used as an approximation.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from engine.ledger import deserialize_state, serialize_state
from engine.strategies.base import Params, State, Strategy


def _init(shape: tuple[int, ...], p: Params) -> dict[str, np.ndarray]:
    return {"c": np.zeros(shape)}


def _update(delta: np.ndarray, slots: dict[str, np.ndarray], p: Params):
    return p["server_lr"] * delta, slots  # c changes through the clients' dc_i, not delta


SCAFFOLD = Strategy(
    name="scaffold",
    defaults={"server_lr": 1.0},
    update=_update,
    init_slots=_init,
    control_variates=True,
    dp=False,  # a client's variate is computed from its unclipped update: not private
    algorithms=("fedavg", "fedpt"),  # SFPrompt's split clients do not apply variates
)


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
