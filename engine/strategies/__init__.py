"""Federated optimization strategies (`federation.strategy`): one file per family, registered here."""

from __future__ import annotations

from engine.strategies import fedavg, fedavgm, fedopt, scaffold
from engine.strategies.base import (
    SLOT_PREFIX,
    STRATEGIES,
    ServerOptimizer,
    Strategy,
    get_strategy,
    register_strategy,
    resolve,
    strategy_params,
)
from engine.strategies.controls import ControlStore

register_strategy(fedavg.FEDAVG)
register_strategy(fedavg.FEDPROX)
register_strategy(fedavgm.FEDAVGM)
register_strategy(fedopt.FEDADAM)
register_strategy(fedopt.FEDYOGI)
register_strategy(fedopt.FEDADAGRAD)
register_strategy(scaffold.SCAFFOLD)

__all__ = [
    "ControlStore",
    "SLOT_PREFIX",
    "STRATEGIES",
    "ServerOptimizer",
    "Strategy",
    "get_strategy",
    "register_strategy",
    "resolve",
    "strategy_params",
]
