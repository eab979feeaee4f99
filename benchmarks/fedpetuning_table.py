"""The FedPETuning table: every method x partition as a real fedray run on one shared local Ray.

    Full grid (~35 min on 2 cores):  .venv/bin/python benchmarks/fedpetuning_table.py
    Tuned rates, 3 seeds (hours):    .venv/bin/python benchmarks/fedpetuning_table.py --tune --seeds 3
    Machinery check (~2 min):        .venv/bin/python benchmarks/fedpetuning_table.py --smoke
Options: --methods full,lora --partitions dir1.0 --rounds 6 --lr adapter=5e-3 --set key=value
         --num-cpus 2 --out benchmarks/out --resume benchmarks/out/fedpetuning_table_runs/STAMP
         (continue a stopped grid: finished runs and sweeps are read back, an interrupted run resumes)

--tune: each federated cell first runs a `fedray tune` sweep (seed 0) over its method's rate x
TUNE_FACTORS (around --lr, the table's rate or the method's default), evaluated on a validation split of
10% of the training rows that no client trains on (data.validation_fraction, eval.split: validation)
every TUNE_EVERY rounds; the best mean validation accuracy of a trial's last TUNE_WINDOW evaluations
wins (final evaluations tie at the majority class under label skew); while the winner is the largest
(smallest) rate tried, one more trial x EDGE_STEP further out, up to EDGE_STEPS; the cell then runs at
the best rate with seeds 1..N on the test split, the same share held out (drawn by each run's seed),
evaluated every TUNE_EVERY rounds too: a row reports the final accuracy and the mean of the last
TUNE_WINDOW evaluations (the statistic tuning ranked by; evaluating changes no training number) and,
with eval.select: validation, the test accuracy at the round the held-out rows scored best. The
centralized baseline (a Ray Train job) keeps its rate. Without --tune every cell runs at its rate
with seeds 0..N-1, evaluated after the last round. --seeds N > 1 reports mean +- std.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    EDGE_STEP,
    EDGE_STEPS,
    ROOT,
    VALIDATION,
    local_ray,
    mean_std,
    offline,
    pm,
    resume_hint,
    run_config,
    short_rate,
    sweep_file,
    table_seeds,
    tune_rate,
)

offline()

from engine.config import apply_overrides, read_yaml, validate_config  # noqa: E402
from engine.methods import get_method  # noqa: E402
from engine.versions import stack_versions, version_line  # noqa: E402
from tuning.score import score  # noqa: E402
from tuning.sweep import reports  # noqa: E402

BASE_CONFIG = ROOT / "configs" / "fedpetuning" / "table.yaml"
METHODS = ("centralized", "full", "lora", "adapter", "prefix", "prompt", "bitfit", "ia3")
PARTITIONS: dict[str, dict[str, Any]] = {
    "dir0.1": {"kind": "dirichlet", "alpha": 0.1},
    "dir1.0": {"kind": "dirichlet", "alpha": 1.0},
    "iid": {"kind": "iid", "alpha": None},
}
# The centralized baseline trains on the union of the clients' rows: the partition does not matter.
CENTRAL_PARTITION = "iid"
CENTRAL_LABEL = "any (union)"
# Learning rates that differ from the method defaults (engine/methods/*.py) for this small encoder:
# LoRA 2e-3 is the quickstart's (measured to learn; FedPETuning's LoRA range is 1e-3..5e-3),
# full fine-tuning 5e-5 (FedPETuning's range for FedFT), prefix 1e-2 (its default 1e-3, the top of
# FedPETuning's range, stays at the majority class on this 40-step budget: measured, docs/results.md).
# Every other method uses its default.
TABLE_LRS = {"lora": 2e-3, "full": 5e-5, "prefix": 1e-2}
TUNE_FACTORS = (1 / 3, 1.0, 3.0)  # --tune: the rates tried, as multiples of the cell's rate
# (and past the grid's edge while the best is on it: harness.EDGE_STEP, EDGE_STEPS)
# --tune scores a trial by its last TUNE_WINDOW validation evaluations, every TUNE_EVERY rounds
# (rounds 6 and 8 of 8): under label skew the final evaluations tie at the majority class (as in
# benchmarks/strategies.py).
TUNE_EVERY, TUNE_WINDOW = 2, 2
# The target: LoRA and adapter within 3 accuracy points of full FT at alpha=1.
TARGET_PARTITION, TARGET_METHODS, TARGET_POINTS = "dir1.0", ("lora", "adapter"), 3.0
SMOKE_OVERRIDES = [
    "model.name=tiny-bert-random",
    "model.max_length=64",
    "data.max_train_samples=200",
    "data.max_test_samples=64",
    "federation.rounds=2",
    "eval.every=2",
    "train.local_steps=2",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS)
    )
    p.add_argument(
        "--partitions", default=",".join(PARTITIONS), help="comma list of dir0.1, dir1.0, iid"
    )
    p.add_argument(
        "--rounds", type=int, default=None, help="rounds per run (eval only after the last)"
    )
    p.add_argument("--lr", action="append", default=[], metavar="METHOD=LR", help="repeatable")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override applied to every run (repeatable)",
    )
    p.add_argument("--config", default=str(BASE_CONFIG), help="base experiment")
    p.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)"
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"), help="folder of the results")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny-bert-random, 200 reviews, 2 rounds of 2 steps: checks the machinery",
    )
    p.add_argument("--tune", action="store_true", help="tune each cell's rate first (see above)")
    p.add_argument("--seeds", type=int, default=1, help="runs per cell (>= 1): mean +- std")
    p.add_argument("--resume", default=None, metavar="RUNS_DIR", help="continue a stopped grid")
    args = p.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("error: --seeds: must be >= 1")
    args.methods = _choices(args.methods, METHODS, "--methods")
    args.partitions = _choices(args.partitions, tuple(PARTITIONS), "--partitions")
    args.lr = _parse_lrs(args.lr)
    return args  # fmt: skip


def _choices(text: str, known: tuple[str, ...], flag: str) -> list[str]:
    picked = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in picked if s not in known]
    if bad or not picked:
        raise SystemExit(
            f"error: {flag}: unknown {bad or 'empty list'}; pick from {', '.join(known)}"
        )
    return picked


def _parse_lrs(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in METHODS or not value:
            raise SystemExit(f"error: --lr {item!r}: expected METHOD=LR with METHOD in {METHODS}")
        out[name] = float(value)
    return out


def grid(methods: list[str], partitions: list[str]) -> list[tuple[str, str]]:
    """(method, partition) cells; the centralized baseline once, whatever the partitions."""
    cells = [("centralized", CENTRAL_LABEL)] if "centralized" in methods else []
    return cells + [(m, p) for m in methods if m != "centralized" for p in partitions]


def method_name(method: str) -> str:
    """The fine-tuning method of a grid row (the centralized baseline tunes with LoRA)."""
    return "lora" if method == "centralized" else method


def learning_rate(method: str, user: dict[str, float]) -> float:
    """--lr for the row (or its method), else the table's choice, else the method's default."""
    name = method_name(method)
    if method in user:
        return user[method]
    if name in user:
        return user[name]
    return TABLE_LRS.get(name, get_method(name).default_lr)


def cell_raw(base: dict[str, Any], method: str, partition: str, lr: float) -> dict[str, Any]:
    """The raw config of one cell: the base with its algorithm, method, lr and partition swapped."""
    raw = copy.deepcopy(base)
    name = method_name(method)
    raw["algorithm"] = "centralized" if method == "centralized" else "fedavg"
    same = (raw.get("method") or {}).get("name", "lora") == name
    raw["method"] = dict(raw["method"]) if same else {"name": name}  # keep the base's LoRA shape
    raw["method"]["lr"] = lr
    raw.setdefault("train", {}).pop("lr", None)  # train.lr would override every method's lr
    part = CENTRAL_PARTITION if method == "centralized" else partition
    raw.setdefault("data", {})["partition"] = dict(PARTITIONS[part])
    raw["name"] = f"{method}-{part}"
    return raw


def run_cell(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One real fedray run in-process (read back or resumed if `run_dir` already holds it)."""
    return run_config(validate_config(raw), run_dir)


def cell_sweep(raw: dict[str, Any], lr: float, folder: Path, smoke: bool) -> Path:
    """The sweep that tunes a cell's rate: lr x TUNE_FACTORS (lr alone in --smoke), seed 0, scored
    by the mean validation accuracy of its last TUNE_WINDOW evaluations, every TUNE_EVERY rounds
    (the final one alone in --smoke; `raw` holds data.validation_fraction)."""
    return rate_sweep(raw, cell_rates(lr, smoke), folder, raw["name"], smoke)


def cell_rates(lr: float, smoke: bool) -> list[float]:
    """A cell's first rates: lr x TUNE_FACTORS, 3 significant digits (lr alone in --smoke)."""
    return [lr] if smoke else [short_rate(lr * f) for f in TUNE_FACTORS]


def rate_sweep(
    raw: dict[str, Any], rates: list[float], folder: Path, name: str, smoke: bool
) -> Path:
    """The sweep file `name` over `rates` (see cell_sweep), its base config beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / f"{raw['name']}.base.yaml"
    base.write_text(yaml.safe_dump(raw, sort_keys=False))
    grid = {"method.lr": {"grid": rates}}
    fixed: dict[str, Any] = {"seed": 0}
    window = 1
    if not smoke:
        fixed["eval.every"] = TUNE_EVERY
        tuned = validate_config({**raw, "eval": {**raw.get("eval", {}), "every": TUNE_EVERY}})
        window = min(TUNE_WINDOW, reports(tuned, "eval/accuracy"))  # one under --rounds 2
    return sweep_file(folder, name, base, fixed, grid, "eval/accuracy", window)


def tune_cell(raw: dict[str, Any], lr: float, folder: Path, smoke: bool) -> tuple[float, list]:
    """The cell's best rate and every rate tried: cell_sweep, then past the edge of the rates tried
    while the best is on it (harness.tune_rate: sweeps `<cell>-edge<step>`; none in --smoke). Each
    sweep is read back or resumed if `folder` already holds it."""
    params, tried = tune_rate(
        lambda rates, name: rate_sweep(raw, rates, folder, name, smoke),
        "method.lr",
        cell_rates(lr, smoke),
        raw["name"],
        folder,
        0 if smoke else EDGE_STEPS,
    )
    return params["method.lr"], tried


def seeds_of(args: argparse.Namespace) -> list[int]:
    return table_seeds(args.seeds, args.tune)


def row_of(method: str, partition: str, lr: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from a cell's seeds: accuracy and macro-F1 mean and std, the rest from the
    first seed (the same for every seed but the wall time)."""
    s = runs[0]["summary"]
    best = s["best"].get("accuracy", {})
    central = method == "centralized"  # nothing crosses a client boundary
    accs = [r["summary"]["metrics"].get("accuracy") for r in runs]
    acc, acc_std = mean_std(accs)
    f1, f1_std = mean_std([r["summary"]["metrics"].get("macro_f1") for r in runs])
    curves = [[(x["round"], x["eval/accuracy"]) for x in r["records"] if "eval/accuracy" in x]
              for r in runs]  # fmt: skip
    windows = [score([a for _, a in c], TUNE_WINDOW) for c in curves]
    windowed = len(curves[0]) >= TUNE_WINDOW and None not in windows
    win, win_std = mean_std(windows) if windowed else (None, None)
    chosen = [r["summary"].get("selected") for r in runs]  # eval.select: validation (--tune)
    picked = None not in chosen
    sel, sel_std = mean_std([c["metrics"]["accuracy"] for c in chosen]) if picked else (None, None)
    return {
        "method": method,
        "partition": partition,
        "lr": lr,
        "seeds": len(runs),
        "accuracy": acc,
        "accuracy_std": acc_std,
        "accuracy_by_seed": accs,
        # the test accuracy averaged over the last TUNE_WINDOW evaluations, as tuning scored
        # validation (None when a run evaluated fewer times: the table runs without --tune)
        "window_accuracy": win,
        "window_accuracy_std": win_std,
        # the test accuracy at the round the validation rows scored best (None without --tune)
        "selected_accuracy": sel,
        "selected_accuracy_std": sel_std,
        "selected_round_by_seed": [c["round"] for c in chosen] if picked else None,
        "accuracy_by_round": {
            rnd: mean_std([dict(c)[rnd] for c in curves])[0] for rnd, _ in curves[0]
        },  # fmt: skip
        "macro_f1": f1,
        "macro_f1_std": f1_std,
        "best_accuracy": best.get("value"),
        "best_round": best.get("round"),
        "rounds": s["rounds_completed"],
        "trainable_params": s["trainable_params"],
        "total_params": s["total_params"],
        "mb_up_per_client_round": None if central else s["bytes_up_per_client_round"] / 1e6,
        "client_gflops_per_round": None if central else s["client_flops_per_round"] / 1e9,
        "comm_bytes_total": s["comm_bytes_total"],
        "wall_s": sum(r["wall_s"] for r in runs),
        "run_wall_s": sum(r["summary"]["wall_s"] for r in runs),
        "run_dir": [r["run_dir"] for r in runs],
        "error": None,
    }


def add_reductions(rows: list[dict[str, Any]]) -> None:
    """reduction_vs_full = full FT's MB up / the method's MB up, within one partition."""
    full = {r["partition"]: r.get("mb_up_per_client_round") for r in rows if r["method"] == "full"}
    for r in rows:
        mine, ref = r.get("mb_up_per_client_round"), full.get(r["partition"])
        r["reduction_vs_full"] = ref / mine if mine and ref else None


def check_target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """LoRA and adapter within TARGET_POINTS accuracy points of full FT at alpha=1."""
    acc = {
        r["method"]: r["accuracy"]
        for r in rows
        if r["partition"] == TARGET_PARTITION and r.get("accuracy") is not None
    }
    missing = [m for m in ("full", *TARGET_METHODS) if m not in acc]
    if missing:
        return {"status": "N/A", "missing": missing, "line": _target_line("N/A", acc, missing)}
    gaps = {m: 100 * (acc["full"] - acc[m]) for m in TARGET_METHODS}
    status = "PASS" if all(g <= TARGET_POINTS for g in gaps.values()) else "FAIL"
    return {
        "status": status,
        "accuracy": acc,
        "gap_points": gaps,
        "line": _target_line(status, acc),
    }


def _target_line(status: str, acc: dict[str, float], missing: list[str] | None = None) -> str:
    head = f"target: LoRA and adapter within {TARGET_POINTS:g} points of full FT at alpha=1 -> {status}"
    if missing:
        return f"{head} (no result for {', '.join(missing)} at {TARGET_PARTITION})"
    parts = [f"full {acc['full']:.4f}"] + [
        f"{m} {acc[m]:.4f} ({100 * (acc[m] - acc['full']):+.1f} pts)" for m in TARGET_METHODS
    ]
    return f"{head}: " + ", ".join(parts)


HEADERS = ("method", "partition", "lr", "final acc", f"acc, last {TUNE_WINDOW} evals",
           "acc, val-selected", "macro-F1",
           "best acc (round)",
           "trainable params", "MB up/client/round", "reduction vs full", "client GFLOPs/round",
           "wall s")  # fmt: skip


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pm(row: dict[str, Any], key: str) -> str:
    return (
        _fmt(row[key], ".4f") if row[key] is None else pm(row[key], row[key + "_std"], row["seeds"])
    )


def markdown(rows: list[dict[str, Any]], target_line: str) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        head = [r["method"], r["partition"], _fmt(r["lr"], "g")]
        if r["error"]:
            cells = head + [f"FAILED: {r['error']}"] + ["-"] * 8 + [_fmt(r["wall_s"], ".0f")]
        else:
            one = r["seeds"] == 1 and r["best_accuracy"]  # (several seeds: see their finals)
            best = f"{r['best_accuracy']:.4f} ({r['best_round']})" if one else "-"
            cells = head + [
                _pm(r, "accuracy"),
                _pm(r, "window_accuracy"),
                _pm(r, "selected_accuracy"),
                _pm(r, "macro_f1"),
                best,
                f"{r['trainable_params']:,}",
                _fmt(r["mb_up_per_client_round"], ".4f"),
                _fmt(r["reduction_vs_full"], ".1f") + ("x" if r["reduction_vs_full"] else ""),
                _fmt(r["client_gflops_per_round"], ".1f"),
                _fmt(r["wall_s"], ".0f"),
            ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n\n" + target_line + "\n"


def run_grid(args: argparse.Namespace, base: dict[str, Any], runs_root: Path) -> list[dict]:
    cells = grid(args.methods, args.partitions)
    rows, t_grid = [], time.perf_counter()
    for i, (method, partition) in enumerate(cells, 1):
        lr = learning_rate(method, args.lr)
        elapsed = time.perf_counter() - t_grid
        _progress(f"[{i}/{len(cells)}] {method} / {partition} (lr {lr:g}), elapsed {elapsed:.0f} s")
        t0 = time.perf_counter()
        try:
            raw = cell_raw(base, method, partition, lr)
            if args.tune:
                raw.setdefault("data", {})["validation_fraction"] = VALIDATION
                if (
                    not args.smoke
                ):  # the test split at the rounds tuning scored (training unchanged)
                    raw.setdefault("eval", {})["every"] = TUNE_EVERY
                if method != "centralized":
                    lr, tried = tune_cell(raw, lr, runs_root / "sweeps", args.smoke)
                    raw["method"]["lr"] = lr
                    _progress(f"[{i}/{len(cells)}] tuned lr {lr:g} of {tried}")
                # the seeds' runs score the held-out rows too: test accuracy at their best round
                raw.setdefault("eval", {})["select"] = "validation"
            runs = [run_cell({**raw, "seed": seed}, runs_root / f"{raw['name']}_s{seed}")
                    for seed in seeds_of(args)]  # fmt: skip
            row = row_of(method, partition, lr, runs)
            if args.tune and method != "centralized":
                row["rates_tried"] = tried
        except Exception as exc:  # a failed run is a table row; the grid goes on
            traceback.print_exc(file=sys.stderr)
            row = {"method": method, "partition": partition, "lr": lr,
                   "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200],
                   "wall_s": time.perf_counter() - t0}  # fmt: skip
        rows.append(row)
        acc = _fmt(row.get("accuracy"), ".4f")
        _progress(f"[{i}/{len(cells)}] done: accuracy {acc}, {row['wall_s']:.0f} s"
                  + (f", FAILED {row['error']}" if row["error"] else ""))  # fmt: skip
    add_reductions(rows)
    return rows


def _progress(msg: str) -> None:
    print(f"== {msg}", file=sys.stderr, flush=True)


def base_config(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The base raw config after --smoke, --rounds and --set, validated once up front."""
    overrides = list(SMOKE_OVERRIDES if args.smoke else [])
    if args.rounds:  # evaluate only after the last round, as the base experiment does
        overrides += [f"federation.rounds={args.rounds}", f"eval.every={args.rounds}"]
    overrides += ["wandb.mode=disabled", *args.set]
    raw = apply_overrides(read_yaml(args.config), overrides)
    validate_config(raw)  # a bad base config stops here, before Ray starts
    return raw, overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base, overrides = base_config(args)
    out = Path(args.out)
    stem = "fedpetuning_table" + ("_smoke" if args.smoke else "")
    runs_root = (
        Path(args.resume) if args.resume else out / f"{stem}_runs" / time.strftime("%Y%m%d-%H%M%S")
    )
    _progress(f"runs in {runs_root} (continue a stopped grid with --resume {runs_root})")
    t0 = time.perf_counter()
    with resume_hint(f"--resume {runs_root}"), local_ray(args.num_cpus):
        rows = run_grid(args, base, runs_root)
    total = time.perf_counter() - t0
    target = check_target(rows)
    md = markdown(rows, target["line"])
    if args.smoke:
        md += "\nsmoke run (tiny random BERT): checks the grid machinery; its accuracies mean nothing\n"
    seeds = seeds_of(args)
    if args.tune:
        factors = ", ".join(f"{f:.3g}" for f in TUNE_FACTORS)
        md += (
            f"\nrates tuned per cell on a {VALIDATION:.0%} validation split (seed 0): x {factors}; "
            f"a best on the edge tried up to {EDGE_STEPS} more, x {EDGE_STEP:g} further out\n"
        )
    md += (
        f"\nseeds {seeds}; grid wall time: {total:.0f} s ({len(rows)} cells); config {args.config}"
    )
    md += f" with {' '.join(overrides) or 'no overrides'}\n{version_line()}\n"
    out.mkdir(parents=True, exist_ok=True)
    report = {"config": str(args.config), "overrides": overrides, "smoke": args.smoke,
              "tune": args.tune, "seeds": seeds,
              "rows": rows, "target": target, "total_wall_s": total, "runs_root": str(runs_root), "versions": stack_versions()}  # fmt: skip
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out / f"{stem}.md").write_text(md)
    print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
