"""`fedray tune`: a Ray Tune sweep of whole fedray runs, then its results table and best config."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from actors.cluster import init_ray
from engine.errors import ConfigError
from engine.rundir import new_run_dir
from tuning.clock import SweepClock
from tuning.results import collect, write_results
from tuning.score import tune_metric
from tuning.sweep import SweepConfig, grid_size, load_sweep, search_space, with_seeds
from tuning.trial import run_trial, trial_bundles

TUNE_DIR = "tune"  # Tune's own experiment folder inside the sweep directory
SWEEP_FILE = "sweep.yaml"  # the sweep as run (base resolved): what --resume reads back


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the sweep: Tune saved its state, no results were written."""

    def __init__(self, sweep_dir: Path) -> None:
        super().__init__(f"continue the sweep with fedray tune --resume {sweep_dir}")


def new_sweep_dir(out: str | None, name: str) -> Path:
    """The sweep directory: --out (empty or absent), else runs/sweeps/<name>-<N> (absolute: Tune needs it)."""
    return new_run_dir(out, name, root="runs/sweeps", resume="fedray tune --resume").resolve()


def check_fits(sweep: SweepConfig, bundles: list[dict[str, float]], nodes: list[dict]) -> int:
    """Trials that fit at once; a trial the cluster can never place is a ConfigError."""
    total = {k: sum(b.get(k, 0.0) for b in bundles) for k in ("CPU", "GPU", "memory")}
    have = {k: sum(n.get(k, 0.0) for n in nodes) for k in total}
    for k, need in total.items():
        if need > have[k] + 1e-9:
            raise ConfigError(
                "trial",
                f"one trial needs {need:g} {k} (driver + server + {len(bundles)} bundles) but the "
                f"cluster has {have[k]:g}; lower trial.workers, trial.driver_cpus or the experiment's "
                "resources",
            )
    for b in bundles:
        if not any(all(b.get(k, 0) <= n.get(k, 0) + 1e-9 for k in b) for n in nodes):
            raise ConfigError("trial", f"no node can hold a bundle {b}; lower its resources")
    fits = min(int(have[k] // total[k] + 1e-9) for k in total if total[k] > 0)
    return max(1, fits)


def _nodes() -> list[dict]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def run_sweep(
    path: str, out: str | None = None, address: str | None = None, seeds: int | None = None
) -> Path:
    """Check the sweep, start (or join) Ray, run every trial, write the results. Returns the sweep dir.
    `seeds`: run every setting with that many seeds from the base experiment's (the file's `seeds`
    replaced)."""
    sweep, base = load_sweep(path)
    if seeds is not None:
        sweep = with_seeds(sweep, seeds, base.seed)
    sweep_dir = new_sweep_dir(out, sweep.name)
    return _run(sweep, base, sweep_dir, address, restore=False)


def resume_sweep(sweep_dir: str, address: str | None = None) -> Path:
    """Continue an interrupted sweep: finished trials are kept, unfinished ones resume their runs."""
    d = Path(sweep_dir).resolve()
    if not (d / SWEEP_FILE).is_file():
        raise ConfigError("--resume", f"{d} is not a fedray sweep directory (no {SWEEP_FILE})")
    sweep, base = load_sweep(d / SWEEP_FILE)
    return _run(sweep, base, d, address, restore=True)


def _restorable(sweep_dir: Path) -> bool:
    """Whether Ray Tune saved the sweep's state (it does so once its trials start); a sweep stopped
    before that has nothing to restore and runs its trials from the start."""
    from ray import tune

    if tune.Tuner.can_restore(str(sweep_dir / TUNE_DIR)):
        return True
    print(f"resume: {sweep_dir} stopped before Ray Tune saved its state; running its trials "
          "from the start", flush=True)  # fmt: skip
    return False


def search_alg(sweep: SweepConfig, concurrent: int) -> Any:
    """Tune's variant generator: seeded draws (with a seeds list, every seed of a setting gets the
    same draw), at most `concurrent` trials at once. The generator holds the cap itself: Tune
    ignores TuneConfig's max_concurrent_trials for one (with only a log warning)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(
        max_concurrent=concurrent,
        constant_grid_search=bool(sweep.seeds),
        random_state=sweep.seed,
    )


def _run(
    sweep: SweepConfig, base: Any, sweep_dir: Path, address: str | None, restore: bool
) -> Path:
    from ray import tune

    os.environ["WANDB_MODE"] = sweep.wandb.mode  # Ray's W&B callback reads only the variable
    # Ctrl-C raises here, not in Tune's own handler: that one returns from fit() as if the trials
    # it cut off had ended, and their results would be written as finished (--resume then never
    # ran them). Trials continue from Tune's last saved state and their runs' checkpoints.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    started = init_ray(address or base.ray.address, base.ray.num_cpus, False)
    try:
        bundles = trial_bundles(sweep, base)
        fits = check_fits(sweep, bundles, _nodes())
        concurrent = min(sweep.max_concurrent_trials or fits, fits)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not restore:
            (sweep_dir / SWEEP_FILE).write_text(yaml.safe_dump(sweep.model_dump(), sort_keys=False))
        restore = restore and _restorable(sweep_dir)
        trainable = tune.with_resources(
            partial(run_trial, sweep=sweep, sweep_dir=str(sweep_dir)),
            tune.PlacementGroupFactory(bundles),
        )
        print(f"sweep {sweep.name}: {grid_size(sweep)} trial(s), {concurrent} at a time, "
              f"each {bundles}; results in {sweep_dir}", flush=True)  # fmt: skip
        if sweep.metric.startswith("eval/") and base.eval.split == "test":
            print(f"note: {sweep.metric} is measured on the test split; to tune without reading "
                  "it, set data.validation_fraction and eval.split: validation", flush=True)  # fmt: skip
        if restore:
            tuner = tune.Tuner.restore(str(sweep_dir / TUNE_DIR), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=search_space(sweep),
                tune_config=tune.TuneConfig(
                    metric=tune_metric(sweep.metric, sweep.score_window),
                    mode=sweep.mode,
                    num_samples=sweep.num_samples,
                    scheduler=_scheduler(sweep),
                    search_alg=search_alg(sweep, concurrent),
                    trial_dirname_creator=lambda t: t.trial_id,
                ),
                run_config=tune.RunConfig(
                    name=TUNE_DIR,
                    storage_path=str(sweep_dir),
                    callbacks=_callbacks(sweep, sweep_dir),
                    verbose=1,
                ),
            )
        with SweepClock(sweep_dir) as clock:  # wall time across --resume
            try:
                tuner.fit()
            except KeyboardInterrupt:
                raise SweepInterrupted(sweep_dir) from None
            rows = collect(sweep, sweep_dir, tuner.get_results())
        write_results(sweep, base, sweep_dir, rows, clock.total())
    finally:
        if started:
            import ray

            ray.shutdown()
    return sweep_dir


def _scheduler(sweep: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = sweep.scheduler
    if s.name == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    return FIFOScheduler()


def _callbacks(sweep: SweepConfig, sweep_dir: Path) -> list:
    """One W&B run per trial, grouped by sweep, its files under SWEEP_DIR/wandb (offline: sync later)."""
    # wandb.init(dir=D) writes into D/wandb
    if sweep.wandb.mode == "disabled":
        return []
    from ray.air.integrations.wandb import WandbLoggerCallback

    return [WandbLoggerCallback(project=sweep.wandb.project, group=sweep.name, dir=str(sweep_dir))]
