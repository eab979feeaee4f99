"""Training algorithms (`algorithm:`): one file per algorithm defines its record, registered here."""

from __future__ import annotations

from engine.algorithms import centralized, fedavg, fedpt, sfprompt
from engine.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    NoServer,
    RoundServer,
    ServerRequest,
    get_algorithm,
    register_algorithm,
    supporting,
)

register_algorithm(fedavg.FEDAVG)
register_algorithm(centralized.CENTRALIZED)
register_algorithm(sfprompt.SFPROMPT)
register_algorithm(fedpt.FEDPT)

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "NoServer",
    "RoundServer",
    "ServerRequest",
    "get_algorithm",
    "register_algorithm",
    "supporting",
]
