"""The adaptive federated optimizers of Reddi et al. (2021), "Adaptive Federated Optimization",
Algorithm 2, on the pseudo-gradient delta = aggregate - global:

    m <- beta1 * m + (1 - beta1) * delta
    v <- v + delta^2                                          FedAdagrad
    v <- beta2 * v + (1 - beta2) * delta^2                    FedAdam
    v <- v - (1 - beta2) * delta^2 * sign(v - delta^2)        FedYogi
    x <- x + server_lr * m / (sqrt(v) + tau)

with m = 0 and v = tau^2 before the first round (the paper's v_{-1} >= tau^2) and no bias
correction, as in the paper. Defaults follow its experiments: beta1 0.9, beta2 0.99, tau 1e-3; FedAdagrad
uses no momentum (beta1 0). server_lr is the rate to tune (`fedray tune`); 0.01 is a safe start for
parameter-efficient modules whose entries are of order 1e-2.
"""

from __future__ import annotations

import numpy as np

from engine.strategies.base import Params, Strategy


def _init(shape: tuple[int, ...], p: Params) -> dict[str, np.ndarray]:
    return {"m": np.zeros(shape), "v": np.full(shape, p["tau"] ** 2)}


def _adaptive(second_moment):
    def update(delta: np.ndarray, slots: dict[str, np.ndarray], p: Params):
        m = p["beta1"] * slots["m"] + (1.0 - p["beta1"]) * delta
        v = second_moment(slots["v"], delta * delta, p)
        return p["server_lr"] * m / (np.sqrt(v) + p["tau"]), {"m": m, "v": v}

    return update


def _adagrad_v(v: np.ndarray, d2: np.ndarray, p: Params) -> np.ndarray:
    return v + d2


def _adam_v(v: np.ndarray, d2: np.ndarray, p: Params) -> np.ndarray:
    return p["beta2"] * v + (1.0 - p["beta2"]) * d2


def _yogi_v(v: np.ndarray, d2: np.ndarray, p: Params) -> np.ndarray:
    return v - (1.0 - p["beta2"]) * d2 * np.sign(v - d2)


def _fedopt(name: str, rule, defaults: dict[str, float]) -> Strategy:
    return Strategy(
        name=name,
        defaults=defaults,
        update=_adaptive(rule),
        init_slots=_init,
    )


_ADAM = {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
FEDADAM = _fedopt("fedadam", _adam_v, _ADAM)
FEDYOGI = _fedopt("fedyogi", _yogi_v, _ADAM)
FEDADAGRAD = _fedopt("fedadagrad", _adagrad_v, {"server_lr": 0.01, "beta1": 0.0, "tau": 1e-3})
