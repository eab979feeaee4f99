"""Centralized training on Ray Train: one TorchTrainer run whose worker loop is the engine's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.cluster import cluster_gpus, fence_gpus, init_ray
from actors.groups import device_resources
from engine.algorithms.centralized import RAY_TRAIN_DIR, CentralJob, train_rounds
from engine.clock import DeviceProfile
from engine.errors import ConfigError, FedRayRuntimeError


def central_loop(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: run the job's rounds, reporting each round's record."""
    import ray.train

    fence_gpus()  # a GPU only when the trainer asked for one (use_gpu); a fraction caps it
    job: CentralJob = config["job"]
    train_rounds(job, lambda record: ray.train.report(_numeric(record)))


def _numeric(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in record.items() if isinstance(v, int | float)}


def fit_central(
    job: CentralJob, storage_path: str, name: str, num_cpus: float = 1.0, num_gpus: float = 0.0
) -> None:
    """Run `job` under `TorchTrainer`; worker errors become FedRayRuntimeError.

    One worker (a one-rank gloo process group; with `num_gpus` it trains on its GPU): the rounds
    train one model sequentially, so more workers would need data-parallel sharding of every batch
    (DDP), which this baseline does not do.
    """
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        central_loop,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(
            num_workers=1,
            use_gpu=num_gpus > 0,
            resources_per_worker={"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})},
        ),
        # No retries: a failed round leaves the run directory resumable with `fedray resume`.
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=0),
            # Ray Train's INFO lines repeat every record; the worker prints its own round line.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001 - Ray Train wraps the worker's error
        raise FedRayRuntimeError(f"centralized training failed: {_root_cause(exc)}") from exc


def _root_cause(exc: BaseException) -> str:
    failures = getattr(exc, "worker_failures", None)
    if failures:
        exc = next(iter(failures.values()))
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]


def central_gpus(cfg, profile: DeviceProfile, cluster_gpus: float) -> float:
    """The Ray Train worker's GPUs: one whole GPU under `client_num_gpus: auto` when the cluster has
    one (a single trainer needs no packing), else the request a client of `profile` would make.
    A ConfigError when that is more than the cluster has (Ray Train would wait forever)."""
    share = 1.0 if cfg.resources.client_num_gpus == "auto" and cluster_gpus >= 1 else None
    gpus = device_resources(cfg, profile, share).num_gpus
    if gpus > cluster_gpus + 1e-9:
        raise ConfigError(
            "resources.client_num_gpus",
            f"the centralized trainer asks for {gpus:g} GPUs but this Ray has {cluster_gpus:g}; "
            "lower it (0 trains on CPUs) or run on a cluster with GPUs (ray.address)",
        )
    return gpus


def ray_train_resources(cfg, prep, address: str | None) -> tuple[float, float]:
    """Start (or join) Ray; the (CPUs, GPUs) of the Ray Train worker, checked against the cluster."""
    init_ray(address or cfg.ray.address, cfg.ray.num_cpus, cfg.ray.dashboard)
    cpus = device_resources(cfg, prep.profile).num_cpus
    return cpus, central_gpus(cfg, prep.profile, cluster_gpus())


def fit_on_ray(job: CentralJob, cfg, prep, run_dir: Path, address: str | None) -> None:
    """The job's rounds on one Ray Train worker (sized as the experiment's device; on a GPU when
    the cluster has one and `resources.client_num_gpus` allows it)."""
    cpus, gpus = ray_train_resources(cfg, prep, address)
    fit_central(
        job,
        storage_path=str(run_dir.resolve() / RAY_TRAIN_DIR),
        name=f"central-from-round-{job.first_round}",
        num_cpus=cpus,
        num_gpus=gpus,
    )
