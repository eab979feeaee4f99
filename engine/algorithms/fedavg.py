"""FedAvg / FedPETuning: clients tune the method's trainable state and the server aggregates it
through the run's strategy (engine/strategies/); no server runs beside the clients. The round itself
is engine/rounds.py."""

from __future__ import annotations

from engine.algorithms.base import Algorithm

FEDAVG = Algorithm(name="fedavg", dp=True, samples=True)
