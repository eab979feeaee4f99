"""SCAFFOLD (Karimireddy et al., 2020), option II: control variates correct the clients' drift.

Client i keeps c_i (zero at first), the server keeps c. Every local step uses the gradient
g - c_i + c; after K steps at learning rate lr the client's new variate is
    c_i+ = c_i - c + (x - y) / (K * lr)
(x: the global state it received, y: its trained state), and it uploads y and dc_i = c_i+ - c_i.
The server steps x by server_lr times the aggregate's delta and sets c += (1 / N) * sum(dc_i) over the
round's accepted clients, which keeps c the mean of all N clients' c_i. A client's c downloads and
dc_i uploads are counted by the ledger (`control_variate`): SCAFFOLD doubles both directions.

The clients' variates live where a deployment keeps them, with each client (controls.py). Option II
assumes plain SGD steps; with AdamW (`train.optimizer`) the same formula is used as an approximation.
"""

from __future__ import annotations

import numpy as np

from engine.strategies.base import Params, Strategy


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
