"""FedAvg (McMahan et al., 2017) and FedProx (Li et al., 2020): the server takes the aggregate as is.

FedProx changes the clients only: each adds (mu / 2) * ||w - w_global||^2 to its local loss over the
tensors it trains, which keeps local work near the global model under heterogeneous data.
"""

from __future__ import annotations

from engine.strategies.base import Strategy

# the (weighted) mean of the clients' states; centralized training runs it trivially (no server)
FEDAVG = Strategy(name="fedavg", algorithms=("fedavg", "sfprompt", "fedpt", "centralized"))

FEDPROX = Strategy(
    name="fedprox",
    defaults={"mu": 0.01},
    proximal=True,
)
