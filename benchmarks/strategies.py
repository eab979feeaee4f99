"""Strategies under label skew: every federated optimizer on the quickstart, rates tuned, several seeds.

    Full (hours on 2 cores):     .venv/bin/python benchmarks/strategies.py
    Machinery check (~5 min):    .venv/bin/python benchmarks/strategies.py --smoke
Options: --alphas "[0.1, 1.0]" --strategies "[fedavg, fedadam]" --seeds 2 --rounds 8 --set key=value
         --out benchmarks/out --resume benchmarks/out/strategies_STAMP (continue a stopped run with the
         same options: finished sweeps and runs are read back, an interrupted one resumes)
         --tuned benchmarks/strategies_tuned.yaml (skip the sweeps: run the seeds at the settings of an
         earlier tuning, its strategies.json or a file of the same rows)

For each Dirichlet alpha and strategy, a `fedray tune` sweep (seed 0) over the client learning rate and the
strategy's own rate (server_lr, or FedProx's mu) picks the setting whose last two evaluations (rounds 6 and 8)
have the best mean macro-F1 on a validation split (10% of the training rows, held out from every client:
data.validation_fraction, eval.split: validation); that setting is then run again with seeds 1..N (never the
tuning seed) on the test split, the same share held out (drawn by each seed). The test split is never read
while tuning. Macro-F1, not accuracy, and two evaluations (the sweeps' score_window), not the final one: under
label skew most settings end on the majority class, where every one ties on the final accuracy and macro-F1
alike (and the first grid value would win), while a model that separated the classes at round 6 still scores
above one that never did. Prints a table (final test accuracy and macro-F1, mean +- std over the seeds,
accuracy per evaluated round, MB up per client and round, the tuned rates) and writes strategies.json beside
the sweeps and runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    ROOT,
    VALIDATION,
    as_overrides,
    mean_std,
    offline,
    pm,
    resume_hint,
    run_experiment,
    sweep_file,
    table_seeds,
    tune,
)

offline()

BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"
STRATEGIES = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold"]
CLIENT_LRS = [5e-4, 2e-3]
# The strategy's own knob, tuned beside the client rate (None: the client rate alone).
OWN_GRID: dict[str, tuple[str, list[float]] | None] = {
    "fedavg": None,
    "fedprox": ("strategy.mu", [0.01, 0.1]),
    "fedavgm": ("strategy.server_lr", [0.1, 0.3]),  # momentum 0.9: effective rates 1 and 3
    "fedadam": ("strategy.server_lr", [0.003, 0.01, 0.03]),
    "fedyogi": ("strategy.server_lr", [0.003, 0.01, 0.03]),
    "fedadagrad": ("strategy.server_lr", [0.01, 0.03, 0.1]),
    "scaffold": None,  # server_lr 1 as in the paper
}
TUNE_METRIC = "eval/macro_f1"  # see the docstring: accuracy ties at the majority class under skew
TUNE_WINDOW = 2  # a trial's score: the mean of its last 2 evaluations (rounds 6 and 8 of 8)
SMOKE = ["model.name=tiny-bert-random", "model.max_length=64", "data.max_train_samples=200",
         "data.max_test_samples=64", "train.local_steps=2", "train.batch_size=8"]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alphas", default="[0.1, 1.0]", help="Dirichlet concentrations (YAML list)")
    p.add_argument("--strategies", default=None, help=f"YAML list (default: all {len(STRATEGIES)})")
    p.add_argument("--seeds", type=int, default=2, help="repeats of each tuned setting (>= 1)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--smoke", action="store_true", help="tiny random BERT, 2 rounds, 1 seed")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--resume", default=None, metavar="DIR", help="continue a stopped run in DIR")
    p.add_argument("--tuned", default=None, metavar="FILE", help="settings of an earlier tuning")
    args = p.parse_args(argv)
    args.alphas = [float(a) for a in yaml.safe_load(args.alphas)]
    args.strategies = yaml.safe_load(args.strategies) if args.strategies else list(STRATEGIES)
    unknown = sorted(set(args.strategies) - set(STRATEGIES))
    if unknown or args.seeds < 1 or args.rounds < 1 or not args.alphas:
        p.error(f"--strategies from {STRATEGIES} (unknown: {unknown}); --seeds, --rounds >= 1")
    if args.tuned is not None:
        try:
            args.tuned = read_tuned(Path(args.tuned), args.alphas, args.strategies)
        except ValueError as exc:
            p.error(f"--tuned: {exc}")
    return args


def read_tuned(
    path: Path, alphas: list[float], strategies: list[str]
) -> dict[tuple[float, str], dict[str, Any]]:
    """(alpha, strategy) -> the tuned overrides, from the rows of a strategies.json (or a YAML file of
    the same rows: alpha, strategy, tuned); every cell asked for must be there."""
    try:
        rows = yaml.safe_load(path.read_text())["rows"]
        tuned = {(float(r["alpha"]), r["strategy"]): dict(r["tuned"]) for r in rows}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path} is not a list of rows with alpha, strategy and tuned ({exc})"
        ) from None
    missing = [f"{a:g}/{s}" for a in alphas for s in strategies if (a, s) not in tuned]
    if missing:
        raise ValueError(
            f"{path} has no setting for {', '.join(missing)}; add them or drop --tuned"
        )
    return tuned


def fixed(args: argparse.Namespace, alpha: float, strategy: str) -> dict[str, Any]:
    """The overrides every run of one (alpha, strategy) cell shares."""
    out: dict[str, Any] = {
        "federation.rounds": 2 if args.smoke else args.rounds,
        "eval.every": 2,
        "data.partition.kind": "dirichlet",
        "data.partition.alpha": alpha,
        "federation.strategy": strategy,
        "data.validation_fraction": VALIDATION,
        "wandb.mode": "disabled",
    }
    for item in (SMOKE if args.smoke else []) + args.set:
        key, _, value = item.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def space(strategy: str, smoke: bool = False) -> dict[str, dict[str, list[float]]]:
    """The tuning grid of one strategy: the client rate x its own knob (one point each in --smoke)."""
    grid = {"train.lr": {"grid": CLIENT_LRS[-1:] if smoke else CLIENT_LRS}}
    own = OWN_GRID[strategy]
    if own is not None:
        key, values = own
        grid[key] = {"grid": values[:1] if smoke else values}
    return grid


def cell(args, alpha: float, strategy: str, out: Path) -> dict[str, Any]:
    name = f"{strategy}_a{alpha:g}"
    base = fixed(args, alpha, strategy)
    t0 = time.perf_counter()
    if args.tuned is not None:
        params = args.tuned[(alpha, strategy)]
    else:
        grid = space(strategy, args.smoke)
        params = tune(
            sweep_file(out / "sweeps", name, BASE_CONFIG, base, grid, TUNE_METRIC, TUNE_WINDOW),
            out / "sweeps" / name,
        )
    tune_s = time.perf_counter() - t0
    runs = []
    for seed in table_seeds(1 if args.smoke else args.seeds, tuned=True):
        overrides = as_overrides({**base, **params, "seed": seed})
        runs.append(run_experiment(BASE_CONFIG, overrides, out / "runs" / f"{name}_s{seed}"))
    return summarize(alpha, strategy, params, runs, tune_s)


def summarize(alpha: float, strategy: str, params: dict, runs: list[dict], tune_s: float) -> dict:
    """One table row from the seeds' runs: final accuracy and macro-F1 (mean, std), accuracy per
    round, bytes."""
    finals, f1s, per_round = [], [], {}
    for res in runs:
        evals = [r for r in res["records"] if "eval/accuracy" in r]
        finals.append(evals[-1]["eval/accuracy"])
        f1s.append(evals[-1]["eval/macro_f1"])
        evals = [(r["round"], r["eval/accuracy"]) for r in evals]
        for rnd, acc in evals:
            per_round.setdefault(rnd, []).append(acc)
    (acc, acc_std), (f1, f1_std) = mean_std(finals), mean_std(f1s)
    return {
        "alpha": alpha,
        "strategy": strategy,
        "tuned": params,
        "accuracy_mean": acc,
        "accuracy_std": acc_std,
        "macro_f1_mean": f1,
        "macro_f1_std": f1_std,
        "accuracy_by_round": {r: statistics.fmean(v) for r, v in sorted(per_round.items())},
        "mb_up_per_client_round": runs[0]["summary"]["bytes_up_per_client_round"] / 1e6,
        "seeds": len(runs),
        "tune_s": tune_s,
        "runs_s": sum(r["wall_s"] for r in runs),
    }


def markdown(rows: list[dict]) -> str:
    rounds = sorted({r for row in rows for r in row["accuracy_by_round"]}, key=int)
    head = ["Dirichlet alpha", "strategy", "tuned", "final accuracy (mean +- std)", "final macro-F1",
            *[f"r{r}" for r in rounds], "MB up / client-round"]  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        tuned = ", ".join(f"{k.split('.')[-1]} {v:g}" for k, v in row["tuned"].items())
        accs = [f"{row['accuracy_by_round'].get(r, float('nan')):.3f}" for r in rounds]
        out.append("| " + " | ".join([f"{row['alpha']:g}", row["strategy"], tuned,
                   pm(row["accuracy_mean"], row["accuracy_std"], row["seeds"]),
                   pm(row["macro_f1_mean"], row["macro_f1_std"], row["seeds"]), *accs,
                   f"{row['mb_up_per_client_round']:.2f}"]) + " |")  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.resume or Path(args.out) / f"strategies_{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"== runs in {out} (continue a stopped run with --resume {out})", file=sys.stderr)
    rows, t0 = [], time.perf_counter()
    with resume_hint(f"--resume {out}"):
        for alpha in args.alphas:
            for strategy in args.strategies:
                print(f"== Dirichlet {alpha:g}, {strategy}", file=sys.stderr, flush=True)
                rows.append(cell(args, alpha, strategy, out))
                (out / "strategies.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    table = markdown(rows)
    print(table)
    print(f"total wall time {time.perf_counter() - t0:.0f} s; {out / 'strategies.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
