"""Client partitioners (IID, FedNLP label-Dirichlet, natural groups): row indices per client."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.errors import ConfigError

PARTITION_KINDS = ("iid", "dirichlet", "natural")


def _check_num_clients(num_clients: int, num_samples: int) -> None:
    if num_clients < 1:
        raise ConfigError("federation.num_clients", f"must be >= 1 (got {num_clients})")
    if num_clients > num_samples:
        raise ConfigError(
            "federation.num_clients",
            f"{num_clients} clients but only {num_samples} training rows; use fewer clients",
        )


def partition_iid(num_samples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """A seeded permutation cut into num_clients parts whose sizes differ by at most 1."""
    _check_num_clients(num_clients, num_samples)
    perm = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, num_clients)]


def dirichlet_counts(p: np.ndarray, size: int) -> np.ndarray:
    """Per-label sample counts for one client: round(p_k * size) for every label but the last, which
    gets the remainder. A count that would overshoot what is left is clipped (as FedNLP does), so
    the counts sum to size. Rounding is Python's round (half to even), as in FedNLP."""
    counts = np.zeros(len(p), dtype=np.int64)
    left = size
    for k in range(len(p) - 1):
        counts[k] = min(round(float(p[k]) * size), left)
        left -= counts[k]
    counts[-1] = left
    return counts


def partition_dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """Label skew as in FedNLP / FedPETuning: equal client sizes, p_i ~ Dir(alpha * q) per client.

    q is the global label distribution over the labels present. Every client gets N // num_clients
    rows; the N % num_clients leftover rows are unused. A label pool that runs dry is made up from
    the other labels, largest remaining pool first. Rows come from per-label pools shuffled once.
    """
    labels = np.asarray(labels)
    if not alpha > 0:
        raise ConfigError("data.partition.alpha", f"must be > 0 (got {alpha})")
    if len(labels) and labels.min() < 0:
        raise ConfigError("data.partition.kind", "dirichlet needs labels; use iid or natural")
    n = len(labels)
    _check_num_clients(num_clients, n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    q = counts / n
    # Per-label pools, shuffled once; pos[k] is how many of pool k are already handed out.
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    pos = np.zeros(len(classes), dtype=np.int64)
    size = n // num_clients
    parts = []
    for _ in range(num_clients):
        p = rng.dirichlet(alpha * q)
        want = dirichlet_counts(p, size)
        take = np.minimum(want, counts - pos)
        missing = size - int(take.sum())
        while missing > 0:  # fill the shortfall from the fullest remaining pool
            remaining = counts - pos - take
            k = int(np.argmax(remaining))
            extra = min(missing, int(remaining[k]))
            take[k] += extra
            missing -= extra
        chosen = [pools[k][pos[k] : pos[k] + take[k]] for k in range(len(classes))]
        pos += take
        parts.append(np.sort(np.concatenate(chosen)).astype(np.int64))
    return parts


def partition_natural(
    groups: Sequence[str], num_clients: int, *, group_key: str = "group"
) -> list[np.ndarray]:
    """One client per group (sorted names), or each group cut into num_clients/groups shards."""
    values = np.asarray([str(g) for g in groups])
    names = sorted(set(values.tolist()))
    g = len(names)
    if num_clients < 1 or g == 0 or num_clients % g != 0:
        raise ConfigError(
            "federation.num_clients",
            f"natural split by {group_key!r} has {g} groups; "
            f"set federation.num_clients to a multiple of {g}",
        )
    shards = num_clients // g
    parts: list[np.ndarray] = []
    for name in names:
        rows = np.flatnonzero(values == name).astype(np.int64)
        if len(rows) < shards:
            raise ConfigError(
                "federation.num_clients",
                f"group {name!r} of {group_key!r} has {len(rows)} rows, fewer than the "
                f"{shards} shards that {num_clients} clients need; use fewer clients",
            )
        parts.extend(np.array_split(rows, shards))  # contiguous, sizes differ by at most 1
    return parts


def label_histograms(
    parts: list[np.ndarray], labels: np.ndarray, num_labels: int
) -> list[list[int]]:
    """Per-client label counts; rows labelled -1 (unlabeled) are not counted."""
    labels = np.asarray(labels)
    out = []
    for part in parts:
        mine = labels[part]
        mine = mine[mine >= 0]
        out.append(np.bincount(mine, minlength=num_labels)[:num_labels].tolist())
    return out


def make_partition(
    kind: str,
    *,
    labels: np.ndarray | None,
    groups: Sequence[str] | None,
    num_clients: int,
    alpha: float,
    seed: int,
    group_key: str = "group",
) -> list[np.ndarray]:
    """Dispatch on data.partition.kind (iid | dirichlet | natural)."""
    if kind == "iid":
        if labels is None and groups is None:
            raise ConfigError(
                "data.partition.kind", "iid needs the number of rows: pass labels or groups"
            )
        n = len(labels) if labels is not None else len(groups)  # type: ignore[arg-type]
        return partition_iid(n, num_clients, seed)
    if kind == "dirichlet":
        if labels is None:
            raise ConfigError("data.partition.kind", "dirichlet needs labels; use iid or natural")
        return partition_dirichlet(labels, num_clients, alpha, seed)
    if kind == "natural":
        if groups is None:
            raise ConfigError(
                "data.partition.kind",
                "natural needs a group column; set data.group_key (e.g. 'book') or use iid",
            )
        return partition_natural(groups, num_clients, group_key=group_key)
    raise ConfigError(
        "data.partition.kind",
        f"unknown partition {kind!r}; use one of {', '.join(PARTITION_KINDS)}",
    )
