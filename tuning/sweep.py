"""Sweep files: the schema, the search space, and every user error caught before a trial starts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.algorithms import get_algorithm
from engine.config import RunConfig, apply_overrides, read_yaml, validate_config
from engine.errors import ConfigError
from engine.strict import DuplicateKeyError, load_yaml

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
MAX_SEEDS = 1000


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SchedulerConfig(_Section):
    # fifo: every trial runs all its rounds; asha: stops poor trials early on the per-eval metric.
    name: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1)  # evaluations before ASHA may stop a trial
    reduction_factor: float = Field(2.0, gt=1)


class TrialResources(_Section):
    """What one trial reserves (its placement group): the trial driver, the server, the clients."""

    driver_cpus: float = Field(0.5, gt=0)  # the trial's own process (FedAvg, FedPT's server side)
    # Client workers per trial; null: the experiment's resources.num_workers, or clients per round.
    workers: int | None = Field(None, ge=1)


class SweepWandb(_Section):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "fedray"


class SweepConfig(_Section):
    name: str = "sweep"
    base: str  # the experiment config, relative to the sweep file
    overrides: dict[str, Any] = {}  # fixed changes to the base for every trial
    space: dict[
        str, dict[str, Any]
    ]  # config key -> {grid|choice: [...]} or {uniform|...: [lo, hi]}
    metric: str = "eval/accuracy"
    mode: Literal["max", "min"] = "max"
    # A trial's score, what ranks it: the mean of its last N evaluations of `metric` (1: the final
    # one). Wider windows tell apart trials whose final evaluations tie (all on the majority class
    # under label skew) and damp a last round's noise.
    score_window: int = Field(1, ge=1)
    num_samples: int = Field(1, ge=1)  # repeats of the grid (or draws, with no grid)
    scheduler: SchedulerConfig = SchedulerConfig()
    max_concurrent_trials: int | None = Field(None, ge=1)  # null: as many as the cluster fits
    trial: TrialResources = TrialResources()
    wandb: SweepWandb = SweepWandb()
    seed: int = 0  # draws of random search spaces
    # Every setting run once per seed (the experiment's `seed`); results give mean and std per setting.
    seeds: list[int] | None = None


def load_sweep(path: str | Path) -> tuple[SweepConfig, RunConfig]:
    """Read and check a sweep file; returns it and its validated base experiment config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("SWEEP", f"{path} does not exist; pass a sweep YAML file")
    try:
        raw = load_yaml(path.read_text())
    except DuplicateKeyError as exc:
        raise ConfigError("SWEEP", f"{path} {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("SWEEP", f"{path} is not UTF-8 text; pass a sweep YAML file") from None
    except (yaml.YAMLError, ValueError, KeyError, RecursionError) as exc:  # bad tags, dates, depth
        raise ConfigError("SWEEP", f"{path} is not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError("SWEEP", f"{path} must hold a mapping of sweep fields")
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "SWEEP"
        raise ConfigError(key, err["msg"]) from None
    if not sweep.space:
        raise ConfigError("space", "name at least one config key to sweep, e.g. {grid: [1, 2]}")
    check_seeds(sweep)
    base_path = (path.parent / sweep.base).resolve()
    if not base_path.is_file():
        raise ConfigError("base", f"{base_path} does not exist; name the experiment config")
    sweep = sweep.model_copy(update={"base": str(base_path)})
    base = base_config(sweep)
    check_space(sweep, base)
    check_metric(sweep, base)
    check_score_window(sweep, base)
    return sweep, base


def check_seeds(sweep: SweepConfig) -> None:
    if sweep.seeds is None:
        return
    if not sweep.seeds or any(not isinstance(s, int) or s < 0 for s in sweep.seeds):
        raise ConfigError("seeds", f"give a list of seeds >= 0, e.g. [0, 1, 2] (got {sweep.seeds})")
    if len(set(sweep.seeds)) != len(sweep.seeds):
        raise ConfigError("seeds", f"{sweep.seeds} repeats a seed; list each once")
    if len(sweep.seeds) > MAX_SEEDS:
        raise ConfigError("seeds", f"{len(sweep.seeds)} seeds; give at most {MAX_SEEDS}")
    if "seed" in sweep.space:
        raise ConfigError("space.seed", "the seeds list repeats every setting per seed; drop one")
    for s in {min(sweep.seeds), max(sweep.seeds)}:  # `seed` is a range in the schema: its ends
        try:
            trial_config(sweep, {"seed": s})
        except ConfigError as exc:
            raise ConfigError("seeds", f"seed {s!r}: {exc.key}: {exc.message}") from None


def with_seeds(sweep: SweepConfig, n: int, first: int) -> SweepConfig:
    """`fedray tune --seeds N`: `first` (the base experiment's seed) and the N - 1 after it, replacing
    `seeds`, checked as a seeds list from the file is."""
    if not 1 <= n <= MAX_SEEDS:
        raise ConfigError("--seeds", f"give 1 to {MAX_SEEDS} seeds (got {n})")
    out = sweep.model_copy(update={"seeds": list(range(first, first + n))})
    check_seeds(out)
    return out


def axes(sweep: SweepConfig) -> list[str]:
    """The parameters a trial is told apart by: the swept keys, then `seed` with a seeds list."""
    return [*sweep.space, *(["seed"] if sweep.seeds else [])]


def _override(key: str, value: Any) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def trial_config(sweep: SweepConfig, params: dict[str, Any]) -> RunConfig:
    """The experiment a trial runs: base + fixed overrides + the trial's parameters."""
    items = {**sweep.overrides, **params}
    return validate_config(
        apply_overrides(read_yaml(sweep.base), [_override(k, v) for k, v in items.items()])
    )


def base_config(sweep: SweepConfig) -> RunConfig:
    try:
        return trial_config(sweep, {})
    except ConfigError as exc:
        raise ConfigError(f"overrides.{exc.key}", exc.message) from None


def space_values(spec: dict[str, Any], key: str) -> tuple[str, list[Any]]:
    """(kind, values): the listed values, or the [low, high] bounds of a distribution."""
    where = f"space.{key}"
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(where, f"give exactly one of {', '.join(KINDS)}, e.g. {{grid: [1, 2]}}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(where, f"{kind} takes a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        ok = len(values) == 2 and all(isinstance(v, int | float) for v in values)
        if not ok or not values[0] < values[1]:
            raise ConfigError(where, f"{kind} takes [low, high] with low < high")
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(where, "loguniform needs low > 0")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise ConfigError(where, "randint takes integer [low, high) bounds")
    return kind, values


def check_space(sweep: SweepConfig, base: RunConfig) -> None:
    """Every swept key exists and every listed value (or both bounds) passes the experiment schema."""
    for key, spec in sweep.space.items():
        kind, values = space_values(spec, key)
        probe = values if kind in ("grid", "choice") else values[:1] + [_below(kind, values[1])]
        for v in probe:
            try:
                trial_config(sweep, {key: v})
            except ConfigError as exc:
                raise ConfigError(
                    f"space.{key}", f"value {v!r}: {exc.key}: {exc.message}"
                ) from None


def _below(kind: str, high: float) -> float:
    """The largest value a [low, high) draw can take (randint excludes high)."""
    return high - 1 if kind == "randint" else high


def reported_metrics(cfg: RunConfig) -> set[str]:
    """The per-round metric names a run of this config reports (what a sweep may optimise)."""
    out = {"train/loss", "comm/bytes_total_cum", "comm/bytes_up", "comm/bytes_down",
           "time/virtual_s", "client/flops_mean", "eval/loss"}  # fmt: skip
    if cfg.model.task == "causal_lm":
        out |= {"eval/perplexity", "eval/accuracy"}
    else:
        out |= {"eval/accuracy", "eval/macro_f1"}
    if cfg.eval.select == "validation":  # the held-out rows beside the test split
        out |= {"val/" + k.removeprefix("eval/") for k in out if k.startswith("eval/")}
    out |= get_algorithm(cfg.algorithm).metrics(cfg)  # e.g. FedPT's proxy-tuned large LM
    return out


def check_metric(sweep: SweepConfig, base: RunConfig) -> None:
    known = reported_metrics(base)
    if sweep.metric not in known:
        raise ConfigError(
            "metric", f"{sweep.metric!r} is not reported by these runs; use one of {sorted(known)}"
        )


def reports(cfg: RunConfig, metric: str) -> int:
    """How many values of `metric` a run of this config reports: an `eval/` (or `val/`) metric
    every `eval.every` rounds and after the last, any other every round."""
    rounds, every = cfg.federation.rounds, cfg.eval.every
    if not metric.startswith(("eval/", "val/")):
        return rounds
    return rounds // every + (rounds % every != 0)


def check_score_window(sweep: SweepConfig, base: RunConfig) -> None:
    n = reports(base, sweep.metric)
    if sweep.score_window > n:
        raise ConfigError(
            "score_window",
            f"{sweep.score_window} is more than the {n} value(s) of {sweep.metric} a run reports "
            f"(federation.rounds {base.federation.rounds}, eval.every {base.eval.every}); "
            f"use 1 to {n}",
        )


def search_space(sweep: SweepConfig) -> dict[str, Any]:
    """The Tune param space: one entry per swept key."""
    from ray import tune

    make = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "uniform": lambda v: tune.uniform(*v),
        "loguniform": lambda v: tune.loguniform(*v),
        "randint": lambda v: tune.randint(*v),
    }
    out = {}
    for key, spec in sweep.space.items():
        kind, values = space_values(spec, key)
        out[key] = make[kind](values)
    if sweep.seeds:
        out["seed"] = tune.grid_search(sweep.seeds)
    return out


def grid_size(sweep: SweepConfig) -> int:
    """Trials a sweep starts: the grid's cells times the seeds times num_samples."""
    cells = math.prod(len(v) for s in sweep.space.values() for k, v in s.items() if k == "grid")
    return cells * len(sweep.seeds or [0]) * sweep.num_samples
