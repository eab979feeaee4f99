"""What the benchmarks share: an offline environment, one real fedray run read back (or resumed),
a tuning sweep on the validation split (a rate's tuned past its grid's edge), one local Ray for a
benchmark, and a clean stop on Ctrl-C. (The memory samplers' background thread is engine.poller.Poller.)"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Share of the training rows a tuned benchmark holds out as its validation split (data.validation_fraction):
# its sweeps score on them, and its table runs hold the same share out (drawn by each run's seed).
VALIDATION = 0.1
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "RAY_AUTH_MODE": "disabled",
    "TRANSFORMERS_VERBOSITY": "error",
}


def offline() -> None:
    """No hub, no W&B, no Ray auth: set before Ray or transformers start (a user's values win)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run as a script from anywhere


# A rate tuned on its grid's edge may be best past it: while the best rate is the largest (smallest) of
# those tried, one more trial EDGE_STEP further out, at most EDGE_STEPS times (tune_rate).
EDGE_STEP, EDGE_STEPS = 3.0, 2
# A benchmark stopped with Ctrl-C exits with the shell's status for SIGINT.
INTERRUPTED_EXIT = 130


@contextlib.contextmanager
def resume_hint(flag: str):
    """Ctrl-C inside the block ends the benchmark with one line that says how to continue it
    (`flag`, e.g. "--resume DIR") and exit status INTERRUPTED_EXIT, not a traceback; the finished
    runs and sweeps stay on disk for the resumed one to read back."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"interrupted: continue with {flag}", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED_EXIT) from None


@contextlib.contextmanager
def local_ray(num_cpus: int | None):
    """One local Ray for the block (`num_cpus`, None: every core): every run and sweep inside joins
    it; shut down at the block's end unless it was already running."""
    from actors.cluster import init_ray

    started = init_ray(None, num_cpus, False)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def run_experiment(base: Path, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """One real fedray run of `base` with `overrides`: see run_config."""
    from engine.config import apply_overrides, read_yaml, validate_config

    return run_config(validate_config(apply_overrides(read_yaml(base), overrides)), run_dir)


def run_config(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """One real fedray run in-process (on the local Ray): summary, records, client rows, wall time,
    run directory.

    A `run_dir` that already holds this run is read back when finished and resumed from its last
    checkpoint when not, so a long benchmark started again with the same output folder picks up
    where it stopped; one that holds another config is an error (nothing is overwritten)."""
    from actors.launch import resume_run, start_run
    from engine.config import load_config
    from engine.rundir import CONFIG, SUMMARY

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the run's table would mix with ours
        fresh = not (run_dir / CONFIG).is_file()
        if fresh:
            out_dir = start_run(cfg, out=str(run_dir))
        elif load_config(run_dir / CONFIG) != cfg:
            raise RuntimeError(f"{run_dir} holds a run of another config; pick a new output folder")
        else:
            out_dir = run_dir if (run_dir / SUMMARY).is_file() else resume_run(run_dir)

    def lines(name: str) -> list[dict[str, Any]]:  # (a centralized run has no client rows)
        path = out_dir / name
        return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []

    summary = json.loads((out_dir / SUMMARY).read_text())
    return {
        "summary": summary,
        "records": lines("metrics.jsonl"),
        "clients": lines("clients.jsonl"),
        # a run read back (or resumed) reports the run's own wall time
        "wall_s": time.perf_counter() - t0 if fresh else summary["wall_s"],
        "run_dir": str(out_dir),
    }


def sweep_file(
    folder: Path,
    name: str,
    base: Path,
    overrides: dict[str, Any],
    grid: dict,
    metric: str,
    window: int = 1,
) -> Path:
    """A `fedray tune` sweep over `grid` (one trial at a time on a small machine) that evaluates on
    the validation split (`overrides` must hold data.validation_fraction) and maximises `metric`,
    a trial scored by the mean of its last `window` evaluations (the sweep's score_window)."""
    sweep = {
        "name": name,
        "base": str(base),
        "overrides": {
            **overrides,
            "eval.split": "validation",
            "resources.num_workers": 1,
            "resources.client_num_cpus": 0.5,
        },  # fmt: skip
        "space": grid,
        "metric": metric,
        "mode": "max",
        "score_window": window,
        "scheduler": {"name": "fifo"},
        "trial": {"driver_cpus": 0.5, "workers": 1},
        "wandb": {"mode": "disabled"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def tune(path: Path, out: Path) -> dict[str, Any]:
    """Run one sweep into `out` (resumed, or read back, if `out` already holds it; refused if it
    holds another sweep): the parameters of the finished trial with the best score, as `fedray
    tune` ranks them (a tie: the first trial)."""
    return tune_scored(path, out)[0]


def tune_scored(path: Path, out: Path) -> tuple[dict[str, Any], float]:
    """`tune`, and the best trial's score."""
    from tuning.score import row_score
    from tuning.sweep import load_sweep
    from tuning.tune import SWEEP_FILE, resume_sweep, run_sweep

    if (out / SWEEP_FILE).is_file() and load_sweep(out / SWEEP_FILE) != load_sweep(path):
        raise RuntimeError(f"{out} holds another sweep than {path}; pick a new output folder")
    with contextlib.redirect_stdout(sys.stderr):
        if not (out / "results.json").is_file():
            if (out / SWEEP_FILE).is_file():
                resume_sweep(str(out))
            else:
                run_sweep(str(path), out=str(out))
    results = json.loads((out / "results.json").read_text())
    done = [r for r in results["rows"] if row_score(r) is not None]
    if not done:
        rows = results["rows"]
        raise RuntimeError(f"every trial of {path.name} failed: {[r['error'] for r in rows]}")
    sign = 1 if results["sweep"]["mode"] == "max" else -1
    best = max(done, key=lambda r: sign * row_score(r))
    return best["params"], row_score(best)


def tune_rate(
    sweep: Callable[[list[float], str], Path],
    key: str,
    rates: list[float],
    name: str,
    folder: Path,
    edge_steps: int = EDGE_STEPS,
) -> tuple[dict[str, Any], list[float]]:
    """The best parameters of `sweep(rates, name)` (run into folder/name, see tune_scored) and every
    rate tried: while the best `key` is the largest or smallest rate tried, a one-rate sweep
    `<name>-edge<step>` EDGE_STEP further out (at most `edge_steps`; a rate past the edge must score
    better to win, a tie keeps the rate inside)."""
    params, score = tune_scored(sweep(rates, name), folder / name)
    tried = list(rates)
    for step in range(1, edge_steps + 1):
        nxt = past_edge(params[key], tried)
        if nxt is None:
            break
        edge = f"{name}-edge{step}"
        path = sweep([nxt], edge)
        nxt_params, nxt_score = tune_scored(path, folder / edge)
        tried.append(nxt)
        sign = 1 if _mode(path) == "max" else -1
        if sign * nxt_score <= sign * score:
            break
        params, score = nxt_params, nxt_score
    return params, sorted(tried)


def past_edge(best: float, rates: list[float]) -> float | None:
    """The next rate to try when `best` is the largest or smallest of `rates` (EDGE_STEP further
    out, 3 significant digits), else None."""
    if best == max(rates):
        return short_rate(best * EDGE_STEP)
    if best == min(rates):
        return short_rate(best / EDGE_STEP)
    return None


def short_rate(lr: float) -> float:
    """A rate to 3 significant digits: 2e-3 / 3 -> 0.000667."""
    return float(f"{lr:.3g}")


def _mode(path: Path) -> str:
    return yaml.safe_load(path.read_text()).get("mode", "max")


def table_seeds(n: int, tuned: bool) -> list[int]:
    """A results table's seeds: 1..n when seed 0 tuned its settings (never scored on the seed that
    chose them), else 0..n-1."""
    return list(range(1, n + 1) if tuned else range(n))


def as_overrides(values: dict[str, Any]) -> list[str]:
    """{"train.lr": 0.001} -> ["train.lr=0.001"] (None -> null)."""
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pm(mean: float, std: float, n: int) -> str:
    """A table cell: 0.8000 for one seed, 0.800 +- 0.012 over several."""
    return f"{mean:.4f}" if n == 1 else f"{mean:.3f} +- {std:.3f}"
