"""FedAvgM (Hsu et al., 2019): server momentum on the pseudo-gradient.

    m <- momentum * m + delta;   x <- x + server_lr * m

Hsu et al. find the effective rate server_lr / (1 - momentum) near 1 works best; the defaults
(0.1, 0.9) give exactly 1.
"""

from __future__ import annotations

import numpy as np

from engine.strategies.base import Params, Strategy


def _init(shape: tuple[int, ...], p: Params) -> dict[str, np.ndarray]:
    return {"m": np.zeros(shape)}


def _update(delta: np.ndarray, slots: dict[str, np.ndarray], p: Params):
    m = p["momentum"] * slots["m"] + delta
    return p["server_lr"] * m, {"m": m}


FEDAVGM = Strategy(
    name="fedavgm",
    defaults={"server_lr": 0.1, "momentum": 0.9},
    update=_update,
    init_slots=_init,
)
