"""Client-level differential privacy for FedAvg (DP-FedAvg) and its privacy accounting.

Each client's update (its trainable state minus the global one) is clipped to L2 norm `clip` over
all trainable tensors; the server averages the clipped updates with a fixed denominator (the
expected number of clients per round, so one client changes the average by at most clip / m) and
adds Gaussian noise of standard deviation noise_multiplier * clip / m to every coordinate
(McMahan et al., ICLR 2018). The privacy spent is the RDP accounting of the subsampled Gaussian
mechanism with sampling rate clients_per_round / num_clients, by Opacus' RDPAccountant. That
accounting assumes Poisson sampling: with `federation.sampling: poisson` it is exact (and a round
nobody joined still releases its noise); with the default fixed-size sampling it is the usual
approximation.
"""

from __future__ import annotations

import math

import numpy as np

from engine.errors import ConfigError

State = dict[str, np.ndarray]


def update_norm(delta: State) -> float:
    """L2 norm over every tensor, exactly rounded (math.fsum): numpy's SIMD sums can differ in the
    last bit with the buffer's memory alignment, and the clip scale must not."""
    return math.sqrt(
        math.fsum(math.fsum((v.astype(np.float64) ** 2).ravel()) for v in delta.values())
    )


def clip_update(delta: State, clip: float) -> tuple[State, float]:
    """delta scaled to L2 norm <= clip (over every tensor together); also its norm before."""
    norm = update_norm(delta)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: (v * scale).astype(v.dtype) for k, v in delta.items()}, norm


def dp_aggregate(
    global_state: State,
    client_states: list[State],
    clip: float,
    noise_multiplier: float,
    expected_clients: int,
    rng: np.random.Generator,
) -> tuple[State, dict[str, float]]:
    """The next global state: global + (sum of clipped updates + N(0, (z * clip)^2)) / m."""
    m = max(expected_clients, 1)
    total = {k: np.zeros_like(v, dtype=np.float64) for k, v in global_state.items()}
    norms = []
    for state in client_states:
        delta = {k: state[k].astype(np.float64) - global_state[k] for k in global_state}
        clipped, norm = clip_update(delta, clip)
        norms.append(norm)
        for k in total:
            total[k] += clipped[k]
    sigma = noise_multiplier * clip
    out = {}
    for k in sorted(global_state):  # a fixed order: the noise is a function of the seed alone
        noise = rng.normal(0.0, sigma, size=total[k].shape) if sigma > 0 else 0.0
        g = global_state[k]
        out[k] = (g.astype(np.float64) + (total[k] + noise) / m).astype(g.dtype)
    clipped_frac = float(np.mean([n > clip for n in norms])) if norms else 0.0
    return out, {
        "privacy/update_norm_mean": math.fsum(norms) / len(norms) if norms else 0.0,
        "privacy/clipped_fraction": clipped_frac,
    }


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """(epsilon, delta)-DP spent after `rounds` rounds (Opacus RDP accountant); inf without noise."""
    if noise_multiplier <= 0:
        return float("inf")
    try:
        from opacus.accountants import RDPAccountant
    except ImportError:  # the accountant is an optional dependency
        raise ConfigError(
            "privacy.noise_multiplier",
            "the privacy accountant needs opacus: pip install 'fedray[dp]'",
        ) from None
    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, rounds)]
    return float(acc.get_epsilon(delta))
