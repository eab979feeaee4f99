"""The strategy registry: the `Strategy` record and the server optimizer every run holds.

A strategy is what the server does with the clients' updates (and, for FedProx, what clients add to
their loss). Every server rule here acts on the round's pseudo-gradient, delta = aggregate - global,
where the aggregate is FedAvg's weighted mean (or DP-FedAvg's noisy mean): FedAvg takes the aggregate
as it is; the others step the global state by their own update of delta, keeping per-tensor slots
(momentum, second moments) that live with the run and are checkpointed with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from engine.errors import ConfigError
from engine.ledger import serialize_state
from engine.registry import Registry
from engine.strategies.controls import ControlStore

State = dict[str, np.ndarray]
Params = Mapping[str, float]
# (delta, slots, params) -> (step, new slots), per tensor, in float64; the new global is x + step.
ServerUpdate = Callable[[np.ndarray, dict[str, np.ndarray], Params], tuple[np.ndarray, dict]]
# (shape, params) -> the slots before the first round
InitSlots = Callable[[tuple[int, ...], Params], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Strategy:
    """A federated optimization strategy.

    `defaults`: the `strategy.*` keys it reads, with their defaults (any other key set is an error).
    `update` / `init_slots`: its server rule on the pseudo-gradient; None means plain FedAvg (the new
    global state is the aggregate itself, bit for bit). `proximal`: clients add
    (mu / 2) * ||w - w_global||^2 to their loss over the trainable tensors (FedProx).
    `control_variates`: clients add c - c_i to every gradient and the server keeps c (SCAFFOLD).
    """

    name: str
    defaults: Mapping[str, float] = field(default_factory=dict)
    update: ServerUpdate | None = None
    init_slots: InitSlots | None = None
    proximal: bool = False
    # SCAFFOLD: clients keep control variates (engine/strategies/scaffold.py); the server's c is
    # the slot "c" of every tensor
    control_variates: bool = False
    dp: bool = True  # composes with privacy.dp
    algorithms: tuple[str, ...] = ("fedavg", "sfprompt", "fedpt")  # where it applies


STRATEGIES: Registry[Strategy] = Registry("strategy")


def register_strategy(strategy: Strategy) -> Strategy:
    if (strategy.update is None) != (strategy.init_slots is None):
        raise ValueError(f"strategy {strategy.name!r}: give both update and init_slots, or neither")
    return STRATEGIES.register(strategy.name, strategy)


def get_strategy(name: str) -> Strategy:
    return STRATEGIES.choose(name, "federation.strategy")


def strategy_params(strategy: Strategy, given: Mapping[str, float | None]) -> dict[str, float]:
    """The strategy's parameters: its defaults overridden by the keys the user set.

    A key set that this strategy does not read is an error (it would silently do nothing).
    """
    for key, value in sorted(given.items()):
        if value is not None and key not in strategy.defaults:
            readers = [s for s in STRATEGIES.names() if key in STRATEGIES.get(s).defaults]
            raise ConfigError(
                f"strategy.{key}",
                f"{strategy.name} does not use it (used by {', '.join(readers)}); remove it "
                "or choose one of those in federation.strategy",
            )
    return {
        k: float(given.get(k) if given.get(k) is not None else v)
        for k, v in strategy.defaults.items()
    }


def resolve(name: str, given: Mapping[str, float | None]) -> tuple[Strategy, dict[str, float]]:
    """`federation.strategy` and the `strategy` section -> (the strategy, its parameters)."""
    strategy = get_strategy(name)
    return strategy, strategy_params(strategy, given)


SLOT_PREFIX = (
    "strategy/"  # checkpoint keys of the server optimizer's slots: strategy/<slot>/<tensor>
)


class ServerOptimizer:
    """The server side of a strategy for one run: its parameters and its slots per tensor."""

    def __init__(self, strategy: Strategy, params: Params, controls: ControlStore | None = None):
        if strategy.control_variates and controls is None:
            raise ValueError(f"strategy {strategy.name!r} needs a ControlStore for the clients")
        self.strategy = strategy
        self.params = dict(params)
        self.controls = controls
        self.slots: dict[str, dict[str, np.ndarray]] = {}  # tensor -> slot -> float32 array

    # -- SCAFFOLD's control variates (no-ops for every other strategy) --------------------------
    def _server_c(self, k: str, like: np.ndarray) -> np.ndarray:
        slots = self.slots.get(k)
        return slots["c"].astype(np.float64) if slots else np.zeros(like.shape)

    def correction(self, client: int, round: int, global_state: State) -> bytes | None:
        """What this client adds to every local gradient this round, c - c_i (serialized)."""
        if self.controls is None:
            return None
        ci = self.controls.load(client, round)
        return serialize_state(
            {
                k: (self._server_c(k, x) - (ci[k] if ci is not None else 0.0)).astype(np.float32)
                for k, x in global_state.items()
            }
        )

    def control_traffic(self, global_state: State) -> dict[str, int]:
        """Bytes of each client's control-variate messages: c down, dc_i up (same size)."""
        if self.controls is None:
            return {}
        n = len(serialize_state({k: v.astype(np.float32) for k, v in global_state.items()}))
        return {"down/control_variate": n, "up/control_variate": n}

    def commit_controls(
        self,
        round: int,
        accepted: list[tuple[int, State, int]],
        global_state: State,
        lr: float,
        num_clients: int,
    ) -> dict[str, float]:
        """SCAFFOLD option II for the round's accepted (client, trained state, local steps):
        c_i+ = c_i - c + (x - y) / (steps * lr), saved with the client; c += sum(dc_i) / N."""
        if self.controls is None:
            return {}
        total = {k: np.zeros(x.shape) for k, x in global_state.items()}
        for client, y, steps in accepted:
            if steps == 0:
                continue
            old = self.controls.load(client, round)
            new = {}
            for k, x in global_state.items():
                ci = old[k].astype(np.float64) if old is not None else np.zeros(x.shape)
                drift = (x.astype(np.float64) - y[k].astype(np.float64)) / (steps * lr)
                new[k] = ci - self._server_c(k, x) + drift
                total[k] += new[k] - ci
            self.controls.save(client, round, {k: v.astype(np.float32) for k, v in new.items()})
        norm_sq = 0.0
        for k in sorted(global_state):  # a fixed order: deserialized dicts come in any order
            x = global_state[k]
            c = self._server_c(k, x) + total[k] / num_clients
            slots = self.slots.setdefault(k, {})
            slots["c"] = c.astype(np.float32)
            norm_sq += float(np.sum(c * c))
        return {"server/control_norm": norm_sq**0.5}

    def step(self, global_state: State, aggregate: State) -> tuple[State, dict[str, float]]:
        """The next global state from this round's aggregate, and what to record about the step."""
        delta_sq = 0.0
        if self.strategy.update is None:
            for k in sorted(aggregate):
                d = aggregate[k].astype(np.float64) - global_state[k].astype(np.float64)
                delta_sq += float(np.sum(d * d))
            return aggregate, {"server/delta_norm": delta_sq**0.5}
        out: State = {}
        step_sq = 0.0
        for k in sorted(aggregate):
            x = global_state[k].astype(np.float64)
            delta = aggregate[k].astype(np.float64) - x
            slots = self.slots.get(k)
            if slots is None:
                slots = self.strategy.init_slots(x.shape, self.params)
            slots = {n: s.astype(np.float64) for n, s in slots.items()}
            step, slots = self.strategy.update(delta, slots, self.params)
            self.slots[k] = {n: s.astype(np.float32) for n, s in slots.items()}
            out[k] = (x + step).astype(global_state[k].dtype)
            delta_sq += float(np.sum(delta * delta))
            step_sq += float(np.sum(step * step))
        return out, {"server/delta_norm": delta_sq**0.5, "server/step_norm": step_sq**0.5}

    def state_dict(self) -> State:
        """The slots as flat checkpoint tensors (`strategy/<slot>/<tensor>`); empty for FedAvg."""
        return {
            f"{SLOT_PREFIX}{slot}/{k}": v
            for k, slots in sorted(self.slots.items())
            for slot, v in sorted(slots.items())
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.slots = {}
        for key, v in state.items():
            slot, _, tensor = key.removeprefix(SLOT_PREFIX).partition("/")
            self.slots.setdefault(tensor, {})[slot] = np.asarray(v, dtype=np.float32)
