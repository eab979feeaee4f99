"""Client worker groups: one per distinct Ray resource request among the population's devices.

A client always trains on a worker of its device's group, so a phone-low client runs in a worker
that asked Ray for a phone-low share of a node and a laptop client in a laptop-sized one. Profiles
with the same request share a group (phone-mid, raspberry-pi-4 and jetson-nano do).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from engine.clock import DeviceProfile
from engine.config import RunConfig
from engine.errors import ConfigError

_EPS = 1e-9


@dataclass(frozen=True, order=True)
class WorkerResources:
    """The Ray resource request of one client worker (scheduling hints, not hard limits)."""

    num_cpus: float
    memory_bytes: int | None
    num_gpus: float

    def ray_options(self) -> dict[str, float | int]:
        """Keyword arguments for `ActorClass.options(...)`."""
        opts: dict[str, float | int] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes:
            opts["memory"] = self.memory_bytes
        return opts

    def bundle(self) -> dict[str, float]:
        """The same request as a placement-group bundle."""
        out: dict[str, float] = {"CPU": self.num_cpus}
        if self.num_gpus:
            out["GPU"] = self.num_gpus
        if self.memory_bytes:
            out["memory"] = float(self.memory_bytes)
        return out

    def describe(self) -> str:
        parts = [f"{self.num_cpus:g} CPU"]
        if self.num_gpus:
            parts.append(f"{self.num_gpus:g} GPU")
        if self.memory_bytes:
            parts.append(f"{self.memory_bytes / 2**20:.0f} MiB")
        return ", ".join(parts)


@dataclass(frozen=True)
class WorkerGroup:
    """`size` workers with one resource request, serving the clients of `devices`."""

    resources: WorkerResources
    size: int
    devices: tuple[str, ...]


def device_resources(
    cfg: RunConfig, profile: DeviceProfile, gpu_share: float | None = None
) -> WorkerResources:
    """A device's worker request: `resources.client_*` when set (every device alike), else the profile's.

    `gpu_share`: what `client_num_gpus: auto` measured (actors/gpu_share.py); auto without a
    measurement (a CPU-only cluster, a sweep) is the profile's num_gpus, as null is.
    """
    r = cfg.resources
    cpus = r.client_num_cpus if r.client_num_cpus is not None else profile.num_cpus
    if r.client_num_gpus == "auto":
        gpus = gpu_share if gpu_share is not None else profile.num_gpus
    else:
        gpus = r.client_num_gpus if r.client_num_gpus is not None else profile.num_gpus
    if r.client_memory_mb:
        mem: int | None = r.client_memory_mb * 2**20
    else:
        mem = profile.memory_bytes if cfg.devices.reserve_memory else None
    return WorkerResources(float(cpus), mem, float(gpus))


def plan_groups(
    cfg: RunConfig,
    profiles: Sequence[DeviceProfile],
    free_cpus: float | None,
    requested: int | str | None = None,
    free_gpus: float | None = None,
    gpu_share: float | None = None,
) -> tuple[list[WorkerGroup], list[int]]:
    """(groups, each client's group index) for a population of device profiles.

    Every group gets one worker; `auto` then adds workers, one at a time, to the group with the
    most clients per worker (ties: the earlier group) while its request fits in `free_cpus` and
    `free_gpus` (None: no limit) and fewer workers than clients per round run. An integer
    `requested` is split the same way. `gpu_share`: see device_resources.
    """
    requested = cfg.resources.num_workers if requested is None else requested
    request = {
        p.name: device_resources(cfg, p, gpu_share) for p in profiles
    }  # one per distinct device
    shapes = sorted(set(request.values()))
    index = {s: i for i, s in enumerate(shapes)}
    client_group = [index[request[p.name]] for p in profiles]
    clients = Counter(client_group)
    devices = [sorted(n for n, s in request.items() if s == shape) for shape in shapes]
    sizes = [1] * len(shapes)
    if requested != "auto":
        if int(requested) < len(shapes):
            raise ConfigError(
                "resources.num_workers",
                f"{requested} is fewer than the device groups with their own resource request "
                f"({_listing(shapes, devices)}); use >= {len(shapes)} or 'auto', or set "
                "resources.client_num_cpus to give every device the same request",
            )
        cap, budget, gpu_budget = int(requested), float("inf"), float("inf")
    else:
        cap = max(len(shapes), cfg.federation.clients_per_round)
        need = sum(s.num_cpus for s in shapes)
        budget = float("inf") if free_cpus is None else free_cpus - need
        need_gpus = sum(s.num_gpus for s in shapes)
        gpu_budget = float("inf") if free_gpus is None else free_gpus - need_gpus
        if budget < -_EPS and len(shapes) > 1:
            raise ConfigError(
                "devices.mix",
                f"one worker per device group needs {need:g} CPUs ({_listing(shapes, devices)}) "
                f"but the cluster has {free_cpus:g} free; lower the profiles' num_cpus, set "
                "resources.client_num_cpus, or give Ray more CPUs (ray.num_cpus)",
            )
    while sum(sizes) < cap:
        order = sorted(range(len(shapes)), key=lambda g: (-clients[g] / (sizes[g] + 1), g))
        fits = [
            g
            for g in order
            if shapes[g].num_cpus <= budget + _EPS
            and (not shapes[g].num_gpus or shapes[g].num_gpus <= gpu_budget + _EPS)
        ]
        if not fits:
            break
        g = fits[0]
        sizes[g] += 1
        budget -= shapes[g].num_cpus
        gpu_budget -= shapes[g].num_gpus
    groups = [WorkerGroup(s, n, tuple(d)) for s, n, d in zip(shapes, sizes, devices, strict=True)]
    return groups, client_group


def check_placeable(
    cfg: RunConfig,
    groups: Sequence[WorkerGroup],
    totals: dict[str, float],
    server_gpus: float = 0.0,
    server_key: str = "server.num_gpus",
) -> None:
    """A ConfigError if one worker of a group asks for more than the whole (local) cluster has, or
    all workers together (with the server's `server_gpus`) ask for more GPUs than it has: Ray would
    queue them forever. Only for a Ray fedray started: a joined cluster may autoscale."""
    keys = {
        "CPU": ("resources.client_num_cpus", "num_cpus"),
        "GPU": ("resources.client_num_gpus", "num_gpus"),
        "memory": (
            "resources.client_memory_mb"
            if cfg.resources.client_memory_mb
            else "devices.reserve_memory",
            "memory_mb",
        ),
    }
    for g in groups:
        for resource, amount in g.resources.bundle().items():
            have = totals.get(resource, 0.0)
            if amount > have + _EPS:
                key, profile_field = keys[resource]
                unit = (lambda v: f"{v / 2**20:.0f} MiB") if resource == "memory" else "{:g}".format
                raise ConfigError(
                    key,
                    f"a {'/'.join(g.devices)} worker asks for {unit(amount)} {resource} but this "
                    f"Ray has {unit(have)}; lower {key} (or the profile's {profile_field}) or "
                    "run on a cluster that has it (ray.address)",
                )
    _check_gpu_total(cfg, groups, totals.get("GPU", 0.0), server_gpus, server_key)


def _check_gpu_total(
    cfg: RunConfig, groups: Sequence[WorkerGroup], have: float, server_gpus: float, server_key: str
) -> None:
    """Workers x GPU fraction (+ the server's GPUs) must fit the cluster's GPUs."""
    workers = sum(g.size * g.resources.num_gpus for g in groups)
    if workers + server_gpus <= have + _EPS:
        return
    listing = ", ".join(
        f"{g.size} x {g.resources.num_gpus:g}" for g in groups if g.resources.num_gpus
    )
    server = f" + {server_gpus:g} for the server ({server_key})" if server_gpus else ""
    explicit = isinstance(cfg.resources.num_workers, int)
    key = "resources.num_workers" if explicit else "resources.client_num_gpus"
    fix = "lower resources.num_workers (or use auto)" if explicit else f"lower {key}"
    raise ConfigError(
        key,
        f"client workers ask for {listing} = {workers:g} GPUs{server} but this Ray has {have:g}; "
        f"{fix}, or run on a cluster with more GPUs (ray.address)",
    )


def _listing(shapes: Sequence[WorkerResources], devices: Sequence[Sequence[str]]) -> str:
    return "; ".join(f"{'/'.join(d)}: {s.describe()}" for s, d in zip(shapes, devices, strict=True))


def describe_groups(groups: Sequence[WorkerGroup]) -> str:
    """E.g. `3 x phone-low (0.25 CPU); 1 x laptop (1 CPU)`."""
    return "; ".join(f"{g.size} x {'/'.join(g.devices)} ({g.resources.describe()})" for g in groups)
