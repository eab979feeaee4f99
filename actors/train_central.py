"""Centralized training on Ray Train: one TorchTrainer run whose worker loop is the engine's."""

from __future__ import annotations

from typing import Any

from actors.cluster import fence_gpus
from engine.algorithms.centralized import CentralJob, train_rounds
from engine.errors import FedRayRuntimeError


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
