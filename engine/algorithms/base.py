"""The algorithm registry: the `Algorithm` record, the server a round talks to, and the lookups.

An algorithm is a frozen record of plain values and functions, in the style of engine/methods/: its
own config checks, whether the method section applies (and otherwise its learning rate), which
run-wide features compose with it (DP, partial work, GPU packing), the model its clients train, the
server it starts beside the clients and that server's Ray resources, its summary label and the extra
metrics a sweep may optimise. Every federated algorithm runs the same round (engine/rounds.py); what
differs lives in its server (a `RoundServer`) and its client runtime. Adding one is a new file here
that defines its record, registered in __init__.py, plus its tests (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from engine.registry import Registry

State = dict[str, np.ndarray]


class RoundServer(Protocol):
    """The server-side party of every round. FedAvg's is `NoServer`; SFPrompt's holds the body
    (engine/split/local.py, actors/body_group.py), FedPT's the black box (engine/lm/server.py)."""

    link: Any  # what client workers call during a task (SFPrompt's body), or None

    def lost(self, result: object) -> bool: ...  # did this client fail because the server died?

    def recover(self) -> None: ...  # wait for the restarted server and restore its round state

    def end_round(
        self, weights: dict[int, float], state: State, round: int
    ) -> tuple[State, dict[str, Any]]: ...  # after aggregation: the next global state + record

    def evaluate(self, state: State, batch_size: int) -> dict[str, float]: ...  # its own eval

    def write_samples(self, state: State, path: Path) -> None: ...  # at the end of a run

    def with_state(self, blob: bytes) -> bytes: ...  # a checkpoint payload with its own state

    def restore(self, blob: bytes) -> bytes: ...  # inverse of with_state on resume

    def crash_after(self) -> None: ...  # faults.server_kill_round: die inside a coming request

    def shutdown(self) -> None: ...


class NoServer:
    """The round server of an algorithm without one: every call leaves the round as it is."""

    link = None

    def lost(self, result: object) -> bool:
        return False

    def recover(self) -> None:
        return None

    def end_round(self, weights: dict[int, float], state: State, round: int):
        return state, {}

    def evaluate(self, state: State, batch_size: int) -> dict[str, float]:
        return {}

    def write_samples(self, state: State, path: Path) -> None:
        return None

    def with_state(self, blob: bytes) -> bytes:
        return blob

    def restore(self, blob: bytes) -> bytes:
        return blob

    def crash_after(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


class ServerRequest(NamedTuple):
    """The Ray resources of an algorithm's server actor, and the key that sets its GPUs."""

    num_cpus: float = 0.0
    num_gpus: float = 0.0
    gpus_key: str = "server.num_gpus"

    def bundle(self) -> dict[str, float]:
        """Its bundle in a Tune trial's placement group; empty for a server that asks for no
        resources (it fits anywhere, so the trial reserves none for it)."""
        return {k: v for k, v in (("CPU", self.num_cpus), ("GPU", self.num_gpus)) if v}


# (cfg, prepared inputs, the clients' WorkerSpec, backend) -> (the clients' spec, its server)
StartServer = Callable[[Any, Any, Any, Any], tuple[Any, RoundServer]]


def _no_check(cfg: Any) -> None:
    return None


def _no_server(cfg: Any, prep: Any, spec: Any, backend: Any) -> tuple[Any, RoundServer]:
    return spec, NoServer()


def _method_name(cfg: Any) -> str:
    return cfg.method.name


def _model_name(cfg: Any) -> str:
    return cfg.model.name


@dataclass(frozen=True)
class Algorithm:
    """A training algorithm (`algorithm:` in a config)."""

    name: str
    check: Callable[[Any], None] = _no_check  # its config errors, before Ray (ConfigError)
    uses_method: bool = True  # the method section applies (its lr, or the method's default_lr)
    default_lr: float | None = None  # the learning rate when the method section does not apply
    federated: bool = True  # False: one central job, no rounds (engine/algorithms/centralized.py)
    dp: bool = False  # privacy.dp composes with it
    partial_work: bool = True  # federation.deadline_policy: partial composes with it
    packs_gpus: bool = True  # resources.client_num_gpus: auto may pack its clients on GPUs
    public_text: bool = False  # its server keeps a public share of the train split
    samples: bool = False  # `fedray samples RUN_DIR` can generate from its checkpoints
    server_faults: bool = False  # faults.server_kill_round can kill its server (a Ray actor)
    client_model: Callable[[Any], str] = _model_name  # what its clients train
    server: Callable[[Any], ServerRequest] = lambda cfg: ServerRequest()
    start: StartServer = _no_server
    label: Callable[[Any], str] = _method_name  # the summary's method column
    metrics: Callable[[Any], set[str]] = lambda cfg: set()  # per-round metrics beyond the common


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")


def register_algorithm(algorithm: Algorithm) -> Algorithm:
    return ALGORITHMS.register(algorithm.name, algorithm)


def get_algorithm(name: str) -> Algorithm:
    return ALGORITHMS.choose(name, "algorithm")


def supporting(feature: str) -> list[str]:
    """The algorithms whose record turns `feature` (a boolean field) on, for error messages."""
    return [n for n in ALGORITHMS.names() if getattr(ALGORITHMS.get(n), feature)]
