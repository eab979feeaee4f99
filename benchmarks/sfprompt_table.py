"""The SFPrompt table: SFPrompt, its ablations, SplitFed and FedFT as real fedray runs, plus the
bytes crossover between split traffic (grows with samples) and FedFT traffic (grows with the model).

    Table (~50 min on 2 cores):    .venv/bin/python benchmarks/sfprompt_table.py
    Tuned, 3 seeds (~4 h):         .venv/bin/python benchmarks/sfprompt_table.py --only table --tune --seeds 3
    Crossover only (~5 min):       .venv/bin/python benchmarks/sfprompt_table.py --only crossover
                                   (writes sfprompt_crossover.json/.md beside a table's sfprompt_table.*)
    Machinery check (~2 min):      .venv/bin/python benchmarks/sfprompt_table.py --smoke
Options: --rounds 8 --set key=value (every table run) --out benchmarks/out
         --resume benchmarks/out/sfprompt_table_runs/STAMP (continue a stopped run: finished runs and
         sweeps are read back, an interrupted one resumes from its checkpoint)

--tune: before the table, a `fedray tune` sweep per family of rows (seed 0, on a validation split of 10%
of the training rows that no client trains on: data.validation_fraction, eval.split: validation) picks
FedFT's and SplitFed's learning rates and SFPrompt's keep ratio x local-loss epochs (GRIDS) by final
validation accuracy (while a rate's best is on the edge of those tried, one more trial EDGE_STEP further
out, up to EDGE_STEPS: harness.tune_rate); every row then runs with its family's choice at seeds 1..N on
the test split, the same share held out (drawn by each run's seed). Without --tune the rows run at the
base config's values, seeds 0..N-1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    EDGE_STEPS,
    ROOT,
    VALIDATION,
    as_overrides,
    local_ray,
    mean_std,
    offline,
    pm,
    resume_hint,
    run_experiment,
    sweep_file,
    table_seeds,
    tune,
    tune_rate,
)

from tuning.report_kit import pareto_front  # noqa: E402

offline()

BASE_CONFIG = ROOT / "configs" / "sfprompt" / "amazon_reviews.yaml"
# Every table run: one local epoch over each client's (kept) data, 200 reviews per client, one
# evaluation after the last round on a seeded 500-review test subset.
TABLE_OVERRIDES = [
    "data.max_train_samples=2000",
    "data.max_test_samples=500",
    "train.local_steps=null",
    "train.local_epochs=1",
    "wandb.mode=disabled",
]
# name -> overrides on the SFPrompt base config
# (the first word of a row's name is its family: the GRIDS entry --tune chooses its values from)
ROWS: dict[str, list[str]] = {
    "FedFT": ["algorithm=fedavg", "method.name=full", "train.lr=5e-5"],
    "SFPrompt": [],
    "SFPrompt w/o pruning": ["pruning.enabled=false"],
    "SFPrompt w/o local loss": ["local_loss.enabled=false"],
    # The cut with no block on the client: head = embeddings + prompts, tail = classifier.
    "SFPrompt zero-block cut": ["split.head_layers=0", "split.tail_layers=0"],
    # SplitFed: the same split, no prompts; the client trains its head and tail, the server its body.
    # One client rate (the tuned train.lr) for all its weights, as FedFT's.
    "SplitFed": [
        "split.encoder_lr=null",
        "split.prompt_length=0",
        "split.train_head=true",
        "server.train_body=true",
        "pruning.enabled=false",
        "local_loss.enabled=false",
        "train.lr=5e-5",
    ],
}
# A family that tunes its rate alone is tuned past its grid's edge (harness.tune_rate).
RATE = "train.lr"
GRIDS: dict[str, dict[str, list[float]]] = {
    "FedFT": {"train.lr": [2e-5, 5e-5, 1e-4]},
    "SFPrompt": {"pruning.keep_ratio": [0.5, 0.75], "local_loss.epochs": [1, 2]},
    "SplitFed": {"train.lr": [2e-5, 5e-5, 1e-4]},
}
SMOKE_OVERRIDES = [
    "model.name=tiny-bert-random",
    "model.max_length=64",
    "split.head_layers=0",  # tiny-bert-random has 2 blocks: one on the client, one on the server
    "split.tail_layers=1",
    "data.max_train_samples=200",
    "data.max_test_samples=64",
    "federation.rounds=2",
    "eval.every=2",
]
# The crossover runs the base config's cut, except where a model is too shallow for it.
CROSSOVER_CUTS = {"tiny-bert-random": ["split.head_layers=0", "split.tail_layers=1"]}  # 2 blocks
# The full method (pruning + local loss) within 3 accuracy points of FedFT at <= 60% of its bytes.
TARGET_ROW, TARGET_POINTS, TARGET_BYTES_PCT = "SFPrompt", 3.0, 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("table", "crossover"), default=None)
    p.add_argument("--rows", default=",".join(ROWS), help="comma list of " + ", ".join(ROWS))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--smoke", action="store_true", help="tiny random BERT, 2 rounds")
    p.add_argument("--tune", action="store_true", help="choose rates and knobs first (GRIDS)")
    p.add_argument("--seeds", type=int, default=1, help="runs of each row (>= 1): mean +- std")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--resume", default=None, metavar="RUNS_DIR", help="continue a stopped run")
    args = p.parse_args(argv)
    unknown = [n for n in _names(args.rows) if n not in ROWS]
    if unknown or args.seeds < 1 or args.rounds < 1:
        p.error(f"--rows from {list(ROWS)} (unknown: {unknown}); --seeds, --rounds >= 1")
    return args


def _names(rows: str) -> list[str]:
    return [n.strip() for n in rows.split(",") if n.strip()]


def run(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """One real fedray run in-process on the shared local Ray: its summary and records."""
    return run_experiment(BASE_CONFIG, overrides, run_dir)


def common_overrides(args: argparse.Namespace) -> list[str]:
    """What every table run (and every tuning trial) shares."""
    common = [*TABLE_OVERRIDES, f"federation.rounds={args.rounds}", f"eval.every={args.rounds}"]
    if args.smoke:
        common += SMOKE_OVERRIDES
    if args.tune:  # the rows tuning reads are held out of every run, tuning or not
        common.append(f"data.validation_fraction={VALIDATION}")
    return common + args.set


def table(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    common = common_overrides(args)
    names = _names(args.rows)
    tuned: dict[str, dict[str, Any]] = {}
    tried: dict[str, list[float] | None] = {}
    if args.tune:
        for fam in dict.fromkeys(family(n) for n in names):
            _progress(f"tuning {fam}: {GRIDS[fam]}")
            sweeps = root / "sweeps"
            tuned[fam], tried[fam] = tune_family(args, fam, common, sweeps)
            _progress(f"tuned {fam}: {tuned[fam]}" + (f" of {tried[fam]}" if tried[fam] else ""))
    seeds = table_seeds(args.seeds, args.tune)
    rows = []
    for i, name in enumerate(names, 1):
        _progress(f"[{i}/{len(names)}] {name}")
        params = row_params(name, tuned)
        try:
            runs = [
                run(
                    [*common, *ROWS[name], *as_overrides({**params, "seed": seed})],
                    root / f"{name.replace(' ', '_').replace('/', '')}_s{seed}",
                )
                for seed in seeds
            ]
            row = {"name": name, "tuned": params, "seeds": seeds, **_row(runs)}
            if tried.get(family(name)):
                row["rates_tried"] = tried[family(name)]
            rows.append(row)
        except Exception as exc:  # a failed run is a row; the table goes on
            traceback.print_exc(file=sys.stderr)
            rows.append({"name": name, "error": f"{type(exc).__name__}: {exc}"[:200]})
        _progress(f"[{i}/{len(names)}] done: {rows[-1].get('accuracy', rows[-1].get('error'))}")
    ref = next((r for r in rows if r["name"] == "FedFT" and "error" not in r), None)
    for r in rows:
        if ref and "error" not in r:
            r["flops_pct_of_fedft"] = (
                100 * r["client_flops_per_round"] / ref["client_flops_per_round"]
            )
            r["bytes_pct_of_fedft"] = 100 * r["bytes_per_round"] / ref["bytes_per_round"]
            r["accuracy_gap_points"] = 100 * (ref["accuracy"] - r["accuracy"])
    return rows


def family(name: str) -> str:
    """A row's family: the first word of its name, the GRIDS entry --tune chooses its values from."""
    return name.split()[0]


def row_params(name: str, tuned: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The row's family's tuned values, less those of a phase the row switches off (no keep ratio
    without pruning, no local-loss epochs without the local loss)."""
    return {
        k: v
        for k, v in tuned.get(family(name), {}).items()
        if f"{k.split('.')[0]}.enabled=false" not in ROWS[name]
    }


def tune_family(
    args: argparse.Namespace, fam: str, common: list[str], folder: Path
) -> tuple[dict[str, Any], list[float] | None]:
    """A family's tuned values (its GRIDS sweep into folder/<fam>) and, for a family that tunes its
    RATE alone, every rate tried: while the best is on an edge of those tried, a one-rate sweep
    `<fam>-edge<step>` further out (harness.tune_rate; none in --smoke)."""
    if list(GRIDS[fam]) != [RATE]:
        return tune(family_sweep(args, fam, common, folder), folder / fam), None
    return tune_rate(
        lambda rates, name: family_sweep(args, fam, common, folder, {RATE: rates}, name),
        RATE,
        GRIDS[fam][RATE][:1] if args.smoke else GRIDS[fam][RATE],
        fam,
        folder,
        0 if args.smoke else EDGE_STEPS,
    )


def family_sweep(
    args: argparse.Namespace,
    fam: str,
    common: list[str],
    folder: Path,
    grids: dict[str, list[float]] | None = None,
    name: str | None = None,
) -> Path:
    """The sweep file `name` (the family's) that tunes one family of rows on the validation split
    over `grids` (its GRIDS; one grid point per key in --smoke)."""
    fixed = {}
    for item in [*common, *ROWS[fam]]:
        key, _, value = item.partition("=")
        fixed[key] = yaml.safe_load(value)
    grids = GRIDS[fam] if grids is None else grids
    grid = {k: {"grid": v[:1] if args.smoke else v} for k, v in grids.items()}
    return sweep_file(folder, name or fam, BASE_CONFIG, fixed, grid, "eval/accuracy")


def _row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from a row's seeds: accuracy and macro-F1 (mean, std), cost (mean)."""
    summaries = [r["summary"] for r in runs]
    rounds = [max(s["rounds_completed"], 1) for s in summaries]
    acc, acc_std = mean_std([s["metrics"]["accuracy"] for s in summaries])
    f1, f1_std = mean_std([s["metrics"]["macro_f1"] for s in summaries])
    per_client_round = [c["bytes_up"] + c["bytes_down"] for r in runs for c in r["clients"]]
    s0 = summaries[0]
    return {
        "accuracy": acc,
        "accuracy_std": acc_std,
        "accuracy_by_seed": [s["metrics"]["accuracy"] for s in summaries],
        "macro_f1": f1,
        "macro_f1_std": f1_std,
        "client_flops_per_round": mean_std([s["client_flops_per_round"] for s in summaries])[0],
        "bytes_per_client_round": sum(per_client_round) / max(len(per_client_round), 1),
        "bytes_per_round": mean_std(
            [s["comm_bytes_total"] / n for s, n in zip(summaries, rounds, strict=True)]
        )[0],
        "bytes_by_kind": s0["comm_bytes_by_kind"],
        "client_peak_memory_bytes": max(s["client_peak_memory_bytes"] for s in summaries),
        "trainable_params": s0["trainable_params"],
        "client_params": s0["total_params"],
        "wall_s": sum(r["wall_s"] for r in runs),
    }


def crossover(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Bytes per client per round vs samples per client, SFPrompt (split phase only) and FedFT.

    Per client and round, with P the model's parameters, p the client's trainable ones, h the
    hidden size, T the padded tokens per sample (prompts included), n samples, E epochs:
        FedFT    ~ 8 P                               (fp32 model down + up)
        SFPrompt ~ 8 p + E n T (16 h + 1)            (activations and gradients, up + down; int8 mask)
    so split traffic is the smaller one below n* = 8 (P - p) / (E T (16 h + 1)) samples per client.
    """
    models = ["tiny-bert-random", "all-minilm-l6-v2"] if not args.smoke else ["tiny-bert-random"]
    sizes = [25, 50, 100, 200] if not args.smoke else [25, 50]
    out: dict[str, Any] = {"models": {}}
    for model in models:
        common = [
            f"model.name={model}",
            *CROSSOVER_CUTS.get(model, []),
            "federation.num_clients=4",
            "federation.clients_per_round=1",
            "federation.rounds=1",
            "eval.every=1",
            "data.max_test_samples=16",
            "train.local_steps=null",
            "train.local_epochs=1",
            "pruning.enabled=false",
            "local_loss.enabled=false",
            "wandb.mode=disabled",
        ]
        points = []
        for n in sizes:
            _progress(f"crossover {model}: {n} samples per client")
            res = run([*common, f"data.max_train_samples={4 * n}"], root / f"x_{model}_{n}")
            c = res["clients"][0]
            split = sum(
                c.get(f"{d}/{k}", 0) for d in ("up", "down") for k in ("activations", "gradients")
            )
            points.append({"samples": c["num_samples"], "split_bytes": split,
                           "state_bytes": c["bytes_up"] + c["bytes_down"] - split})  # fmt: skip
        _progress(f"crossover {model}: FedFT")
        fedft = run([*common, "algorithm=fedavg", "method.name=full", "data.max_train_samples=100"],
                    root / f"x_{model}_fedft")  # fmt: skip
        f = fedft["clients"][0]
        s = res["summary"]
        out["models"][model] = _fit(points, f["bytes_up"] + f["bytes_down"], s, model)
    return out


def _fit(points: list[dict], fedft_bytes: int, summary: dict, model: str) -> dict[str, Any]:
    """Split bytes per sample (least squares through the points) and the crossover sample count."""
    from engine.models import TINY_MODELS, resolve_model_path

    if model in TINY_MODELS:
        hidden = TINY_MODELS.get(model)("classification", 2, 8).config.hidden_size
    else:
        from transformers import AutoConfig

        hidden = AutoConfig.from_pretrained(resolve_model_path(model)).hidden_size
    ns = [p["samples"] for p in points]
    per_sample = sum(p["split_bytes"] * p["samples"] for p in points) / sum(n * n for n in ns)
    state = points[0]["state_bytes"]
    n_star = (fedft_bytes - state) / per_sample
    return {
        "hidden": hidden,
        "points": points,
        "fedft_bytes_per_client_round": fedft_bytes,
        "sfprompt_state_bytes_per_client_round": state,
        "split_bytes_per_sample": per_sample,
        "effective_tokens_per_sample": per_sample / (16 * hidden + 1),
        "crossover_samples_per_client": n_star,
        "client_params": summary["total_params"],
    }


def markdown(rows: list[dict[str, Any]], cross: dict[str, Any] | None) -> str:
    lines = []
    if rows:
        lines += [
            "| run | tuned | accuracy | macro-F1 | client GFLOPs/round | % of FedFT | MB/round | "
            "% of FedFT | client peak MB | seeds | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['name']} | failed: {r['error']} |||||||||| ")
                continue
            tuned = ", ".join(f"{k.split('.')[-1]} {v:g}" for k, v in r["tuned"].items()) or "-"
            if r.get("rates_tried"):
                tuned += " of " + "/".join(f"{x:g}" for x in r["rates_tried"])
            lines.append(
                f"| {r['name']} | {tuned} | {_pm(r, 'accuracy')} | {_pm(r, 'macro_f1')} | "
                f"{r['client_flops_per_round'] / 1e9:.3g} | {r.get('flops_pct_of_fedft', math.nan):.3g} | "
                f"{r['bytes_per_round'] / 1e6:.1f} | {r.get('bytes_pct_of_fedft', math.nan):.1f} | "
                f"{r['client_peak_memory_bytes'] / 2**20:.1f} | {len(r['seeds'])} | {r['wall_s']:.0f} |"
            )
    if cross:
        lines += ["", "| model | hidden | FedFT MB/client/round | split KB/sample | tokens/sample | "
                  "crossover samples/client |", "|---|---|---|---|---|---|"]  # fmt: skip
        for name, m in cross["models"].items():
            lines.append(
                f"| {name} | {m['hidden']} | {m['fedft_bytes_per_client_round'] / 1e6:.1f} | "
                f"{m['split_bytes_per_sample'] / 1e3:.1f} | {m['effective_tokens_per_sample']:.1f} | "
                f"{m['crossover_samples_per_client']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def target_line(rows: list[dict[str, Any]]) -> str:
    """PASS / FAIL / N/A for the full method against FedFT (accuracy gap and bytes share)."""
    head = (f"target: {TARGET_ROW} within {TARGET_POINTS:g} points of FedFT at <= "
            f"{TARGET_BYTES_PCT:g}% of its bytes ->")  # fmt: skip
    row = next((r for r in rows if r["name"] == TARGET_ROW and "accuracy_gap_points" in r), None)
    if row is None:
        return f"{head} N/A (no {TARGET_ROW} and FedFT results)"
    gap, share = row["accuracy_gap_points"], row["bytes_pct_of_fedft"]
    ok = gap <= TARGET_POINTS and share <= TARGET_BYTES_PCT
    acc = row["accuracy"]
    return (f"{head} {'PASS' if ok else 'FAIL'}: {acc:.3f} vs FedFT's {acc + gap / 100:.3f} "
            f"({-gap:+.1f} points), {share:.1f}% of its bytes")  # fmt: skip


# the costs a row's accuracy is traded against: (row key, label, scale, unit)
COSTS = (
    ("bytes_per_round", "MB/round", 1e6, "MB"),
    ("client_flops_per_round", "client FLOPs/round", 1e9, "GFLOPs"),
)


def fronts(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per cost, the names of the rows no other row beats on both accuracy and that cost, cheapest
    first: what a user gives up for each point of accuracy."""
    done = [r for r in rows if "error" not in r]
    return {
        key: [done[i]["name"] for i in pareto_front([(r[key], r["accuracy"]) for r in done])]
        for key, *_ in COSTS
    }


def front_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per cost: the front's rows as name (accuracy, cost), cheapest first."""
    by_name = {r["name"]: r for r in rows}
    front = fronts(rows)
    lines = []
    for key, label, scale, unit in COSTS:
        names = front[key]
        points = [
            f"{n} ({by_name[n]['accuracy']:.3f}, {by_name[n][key] / scale:.3g} {unit})"
            for n in names
        ]
        lines.append(f"Pareto front, accuracy vs {label}: " + " -> ".join(points))
    return lines


def output_stem(args: argparse.Namespace) -> str:
    """The name of the JSON and Markdown written to --out (and of its runs folder): a crossover-only
    run writes its own, so it never overwrites a table measured into the same --out."""
    kind = "crossover" if args.only == "crossover" else "table"
    return f"sfprompt_{kind}" + ("_smoke" if args.smoke else "")


def _pm(row: dict[str, Any], key: str) -> str:
    return pm(row[key], row[key + "_std"], len(row["seeds"]))


def _progress(msg: str) -> None:
    print(f"== {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.rounds = 2  # what SMOKE_OVERRIDES run
    stem = output_stem(args)
    out = Path(args.out)
    root = (
        Path(args.resume) if args.resume else out / f"{stem}_runs" / time.strftime("%Y%m%d-%H%M%S")
    )
    _progress(f"runs in {root} (continue a stopped table with --resume {root})")
    t0 = time.perf_counter()
    with resume_hint(f"--resume {root}"), local_ray(args.num_cpus):
        rows = table(args, root) if args.only in (None, "table") else []
        cross = crossover(args, root) if args.only in (None, "crossover") else None
    md = markdown(rows, cross)
    if rows:
        md += "\n" + target_line(rows) + "\n\n" + "\n".join(front_lines(rows)) + "\n"
    md += f"\ntotal wall time {time.perf_counter() - t0:.0f} s; base {BASE_CONFIG.name}, "
    md += f"{args.rounds} rounds, {' '.join(TABLE_OVERRIDES + args.set)}\n"
    out.mkdir(parents=True, exist_ok=True)
    report = {"rows": rows, "crossover": cross, "rounds": args.rounds, "smoke": args.smoke,
              "tune": args.tune, "grids": GRIDS if args.tune else None, "fronts": fronts(rows),
              "overrides": TABLE_OVERRIDES + args.set, "runs_root": str(root)}  # fmt: skip
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out / f"{stem}.md").write_text(md)
    print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
