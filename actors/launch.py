"""Runs on Ray: start (or join) a cluster, size the client worker pool and the algorithm's server,
and run the centralized job on Ray Train; `start_run` / `resume_run` are engine.runner's on Ray (or, with a
`backend` given, in this process)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from actors.cluster import cluster_cpus, cluster_gpus, init_ray
from actors.groups import check_placeable, describe_groups, plan_groups
from engine.algorithms import ServerRequest, get_algorithm
from engine.clock import load_device_profile
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.prepare import Prepared
from engine.runner import InProcess, Launch, OnRound
from engine.runner import resume_run as _resume
from engine.runner import start_run as _start

# Everything that imports Ray (actors/pool.py, actors/train_central.py, ray itself) is imported where it is
# used: a run with a `backend` given (`--in-process`) never loads Ray (tests/e2e/test_in_process.py).


class RayLaunch:
    """The client workers on Ray (`address`, else the config's ray.address, else a local Ray), the
    centralized job on Ray Train."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def backend(self, cfg: RunConfig, prep: Prepared):
        return make_backend(cfg, self.address, prep.profiles, prep.train_spec)

    def check_central(self, cfg: RunConfig, prep: Prepared) -> None:
        from actors.train_central import ray_train_resources

        ray_train_resources(cfg, prep, self.address)

    def fit_central(self, cfg: RunConfig, prep: Prepared, run_dir: Path) -> Callable:
        from actors.train_central import fit_on_ray

        return lambda job: fit_on_ray(job, cfg, prep, run_dir, self.address)


def _launch(address: str | None, backend) -> Launch:
    return InProcess(backend) if backend is not None else RayLaunch(address)


def start_run(
    cfg: RunConfig,
    out: str | None = None,
    address: str | None = None,
    backend=None,
    on_round: OnRound | None = None,
) -> Path:
    """engine.runner.start_run on Ray; a `backend` given (e.g. LocalBackend) runs in this process."""
    return _start(cfg, out, on_round=on_round, launch=_launch(address, backend))


def resume_run(
    run_dir: str | Path, address: str | None = None, backend=None, on_round: OnRound | None = None
) -> Path:
    """engine.runner.resume_run on Ray; a `backend` given runs in this process."""
    return _resume(run_dir, on_round=on_round, launch=_launch(address, backend))


def server_request(cfg: RunConfig) -> ServerRequest:
    """The Ray CPUs and GPUs of the run's server actor (SFPrompt's body, FedPT's black box, or none)."""
    return get_algorithm(cfg.algorithm).server(cfg)


def make_backend(cfg: RunConfig, address: str | None = None, profiles=None, train_spec=None):
    """Start (or join) Ray and size the client worker groups from config and cluster resources.

    `profiles`: each client's device (prepare's); a worker group per distinct resource request.
    `train_spec`: what a GPU probe trains one step of when `client_num_gpus: auto` packs GPUs.
    """
    import ray

    from actors.pool import GpuPacking, RayBackend

    if profiles is None:
        profiles = [load_device_profile(cfg.resources.device_profile)]
    started = init_ray(address or cfg.ray.address, cfg.ray.num_cpus, cfg.ray.dashboard)

    request = server_request(cfg)

    def plan(gpu_share: float | None = None):
        # The server actor (SFPrompt's body, FedPT's black box) takes its CPUs and GPUs first.
        groups, client_group = plan_groups(
            cfg,
            profiles,
            cluster_cpus() - request.num_cpus,
            free_gpus=cluster_gpus() - request.num_gpus,
            gpu_share=gpu_share,
        )
        if started:
            totals = ray.cluster_resources()
            check_placeable(cfg, groups, totals, request.num_gpus, request.gpus_key)
        if len(groups) > 1:
            print("client workers: " + describe_groups(groups), file=sys.stderr)
        return groups, client_group if len(groups) > 1 else None

    try:
        groups, client_group = plan()
    except ConfigError:
        if started:
            ray.shutdown()
        raise
    packing = None
    if packs_gpus(cfg, cluster_gpus() - request.num_gpus) and train_spec is not None:
        packing = GpuPacking(train_spec, plan)
    # A Ray this run started is stopped with the pool; a joined cluster or session is left running.
    return RayBackend(
        groups,
        client_group,
        cfg.resources.task_timeout_s,
        owns_ray=started,
        retries=cfg.faults.client_retries,
        packing=packing,
    )


def packs_gpus(cfg: RunConfig, free_gpus: float) -> bool:
    """Whether `client_num_gpus: auto` measures and packs GPUs: a whole GPU is free for the probe
    and the clients train whole models (SFPrompt's split client stays on the CPU for now)."""
    return (
        cfg.resources.client_num_gpus == "auto"
        and free_gpus >= 1
        and get_algorithm(cfg.algorithm).packs_gpus
    )
