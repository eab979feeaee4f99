"""Deadline policies on a mixed phone/laptop population: no deadline vs `drop` vs `partial` work.

    .venv/bin/python benchmarks/deadline.py            (~15 min on 2 cores: three quickstart runs)
    .venv/bin/python benchmarks/deadline.py --seeds 3  (~50 min: each policy at seeds 0, 1, 2)
    .venv/bin/python benchmarks/deadline.py --smoke    (~1 min: tiny random BERT)
Options: --mix "{phone-low: 0.5, laptop: 0.5}" --deadline S (default: half the slowest client's time
in seed 0's run without a deadline; every seed uses the same) --rounds 8 --set key=value
--out benchmarks/out --resume benchmarks/out/deadline_runs/STAMP (continue a stopped run: finished
runs are read back, an interrupted one resumes from its checkpoint)

The quickstart experiment (all-MiniLM-L6-v2 + LoRA, embedded reviews) with half the clients on a
low-end phone: without a deadline every round waits for the phones; with `drop` a round ends at the
deadline and the phones' work is thrown away; with `partial` the phones run the local steps that fit
before the deadline and their updates count. With --seeds N each policy runs at seeds 0..N-1 and a row
is their mean (accuracy +- sample std). Prints a table and writes deadline.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, mean_std, offline, pm, resume_hint, run_experiment  # noqa: E402

offline()

BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"
SMOKE = ["model.name=tiny-bert-random", "model.max_length=64", "data.max_train_samples=200",
         "data.max_test_samples=64", "train.local_steps=6", "train.batch_size=8"]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mix", default="{phone-low: 0.5, laptop: 0.5}")
    p.add_argument("--deadline", type=float, default=None, help="virtual seconds")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--smoke", action="store_true", help="tiny random BERT, 3 rounds")
    p.add_argument("--seeds", type=int, default=1, help="runs per policy (>= 1): mean +- std")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--resume", default=None, metavar="RUNS_DIR", help="continue a stopped run")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    return args


def run(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    return run_experiment(BASE_CONFIG, overrides, run_dir)


def row(name: str, deadline: float | None, res: dict[str, Any]) -> dict[str, Any]:
    recs, clients = res["records"], res["clients"]
    evals = [(r["round"], r["eval/accuracy"]) for r in recs if "eval/accuracy" in r]
    phones = [c for c in clients if c["device"] != "laptop"]
    return {
        "policy": name,
        "deadline_s": deadline,
        "accuracy": evals[-1][1],
        "accuracy_by_round": dict(evals),
        "virtual_s": recs[-1]["time/virtual_s"],
        "aggregated": sum(r["clients/completed"] for r in recs),
        "partial": sum(r.get("clients/partial", 0) for r in recs),
        "dropped_deadline": dropped(recs, "deadline"),
        "unavailable": dropped(recs, "unavailable"),
        "phone_steps_mean": sum(c["steps"] for c in phones) / max(len(phones), 1),
        "mb_total": res["summary"]["comm_bytes_total"] / 1e6,
        "wall_s": res["wall_s"],
    }


def dropped(records: list[dict[str, Any]], why: str) -> int:
    """Clients dropped for `why` over all rounds."""
    return sum(list(r.get("clients/dropped_reasons", {}).values()).count(why) for r in records)


POLICIES = ("no deadline", "drop", "partial")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    root = (
        Path(args.resume) if args.resume else out / "deadline_runs" / time.strftime("%Y%m%d-%H%M%S")
    )
    print(f"== runs in {root} (continue a stopped run with --resume {root})", file=sys.stderr)
    common = [f"devices.mix={args.mix}", f"federation.rounds={args.rounds}",
              f"eval.every={max(args.rounds // 4, 1)}", "wandb.mode=disabled"]  # fmt: skip
    if args.smoke:
        common += [*SMOKE, "federation.rounds=3", "eval.every=1"]
    common += args.set
    seeds = list(range(args.seeds))
    runs: dict[str, list[dict[str, Any]]] = {policy: [] for policy in POLICIES}
    deadline = args.deadline
    with resume_hint(f"--resume {root}"):
        for seed in seeds:
            print(f"[seed {seed}] no deadline", file=sys.stderr, flush=True)
            free = run([*common, f"seed={seed}"], root / f"no_deadline_s{seed}")
            if deadline is None:  # half the slowest client of seed 0's run, for every seed
                deadline = round(0.5 * max(c["virtual_total_s"] for c in free["clients"]), 3)
            runs["no deadline"].append(row("no deadline", None, free))
            for policy in POLICIES[1:]:
                print(
                    f"[seed {seed}] deadline {deadline:g} s, {policy}", file=sys.stderr, flush=True
                )
                res = run([*common, f"seed={seed}", f"federation.round_deadline_s={deadline}",
                           f"federation.deadline_policy={policy}"], root / f"{policy}_s{seed}")  # fmt: skip
                runs[policy].append(row(policy, deadline, res))
    rows = [summarize(per_seed) for per_seed in runs.values()]
    out.mkdir(parents=True, exist_ok=True)
    result = {"mix": args.mix, "deadline_s": deadline, "seeds": seeds, "overrides": common,
              "rows": rows, "runs_root": str(root)}  # fmt: skip
    (out / "deadline.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows))
    print(f"\nwrote {out / 'deadline.json'} (runs under {root})")
    return 0


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """A policy's row over its seeds: accuracy (final and by round) as mean and sample std, the
    counts, times and bytes as means; the seeds' own rows under "by_seed"."""
    first = per_seed[0]
    acc, acc_std = mean_std([r["accuracy"] for r in per_seed])
    rounds = first["accuracy_by_round"]
    out = {"policy": first["policy"], "deadline_s": first["deadline_s"], "seeds": len(per_seed),
           "accuracy": acc, "accuracy_std": acc_std,
           "accuracy_by_round": {k: mean_std([r["accuracy_by_round"][k] for r in per_seed])[0]
                                 for k in rounds}}  # fmt: skip
    for key in ("virtual_s", "aggregated", "partial", "dropped_deadline", "unavailable",
                "phone_steps_mean", "mb_total", "wall_s"):  # fmt: skip
        out[key] = mean_std([r[key] for r in per_seed])[0]
    out["by_seed"] = per_seed
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """The policies' rows; counts, times and bytes are means over the seeds."""
    head = ("| policy | deadline (s) | final accuracy | virtual time (s) | aggregated | partial "
            "| dropped (deadline) | unavailable | phone steps (mean) | MB total |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        d = "-" if r["deadline_s"] is None else f"{r['deadline_s']:g}"
        lines.append(
            f"| {r['policy']} | {d} | {pm(r['accuracy'], r['accuracy_std'], r['seeds'])} | "
            f"{r['virtual_s']:.1f} | {r['aggregated']:g} | {r['partial']:g} | "
            f"{r['dropped_deadline']:g} | {r['unavailable']:g} | {r['phone_steps_mean']:.1f} | "
            f"{r['mb_total']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
