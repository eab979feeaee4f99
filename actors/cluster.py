"""Starting or joining Ray: a local Ray by default, an existing cluster with `ray.address`."""

from __future__ import annotations

import logging
import os

from engine.device import cap_gpu_memory

# Variables every Ray worker must see; set before ray.init so workers inherit them.
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def init_ray(address: str | None, num_cpus: int | None, dashboard: bool) -> bool:
    """Connect to Ray; returns True when this call started it (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)
    kwargs: dict = {
        "include_dashboard": dashboard,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
        "runtime_env": {"env_vars": {**WORKER_ENV, "WANDB_MODE": os.environ["WANDB_MODE"]}},
    }
    if address:
        ray.init(address=address, **kwargs)
    else:  # "local": a new Ray even when another one runs on this machine (ray.init() would join it)
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    return True


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def fence_gpus() -> float | None:
    """Keep this Ray process to what Ray gave it: no GPU at all when it asked for none, and at most
    its share of a GPU's memory when it asked for a fraction (engine.device.memory_cap).

    Call first thing in an actor, before anything touches CUDA. Returns the cap set, if any.
    """
    import ray

    hide_unassigned_gpus()
    share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    return cap_gpu_memory(share) if share else None


def hide_unassigned_gpus() -> None:
    """Make the GPUs invisible to a Ray process that was assigned none.

    Recent Ray no longer sets CUDA_VISIBLE_DEVICES for actors that asked for no GPU, so they would
    see (and could allocate on) every GPU of the node. Call before anything touches CUDA.
    """
    import ray

    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
