"""Deadline policies on a mixed phone/laptop population: no deadline vs `drop` vs `partial` work.

    .venv/bin/python benchmarks/deadline.py            (~15 min on 2 cores: three quickstart runs)
    .venv/bin/python benchmarks/deadline.py --smoke    (~1 min: tiny random BERT)
Options: --mix "{phone-low: 0.5, laptop: 0.5}" --deadline S (default: half the slowest client's time
in the run without a deadline) --rounds 8 --set key=value --out benchmarks/out

The quickstart experiment (all-MiniLM-L6-v2 + LoRA, embedded reviews) with half the clients on a
low-end phone: without a deadline every round waits for the phones; with `drop` a round ends at the
deadline and the phones' work is thrown away; with `partial` the phones run the local steps that fit
before the deadline and their updates count. Prints a table and writes deadline.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, offline, run_experiment  # noqa: E402

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
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    return p.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    root = out / "deadline_runs" / time.strftime("%Y%m%d-%H%M%S")
    common = [f"devices.mix={args.mix}", f"federation.rounds={args.rounds}",
              f"eval.every={max(args.rounds // 4, 1)}", "wandb.mode=disabled"]  # fmt: skip
    if args.smoke:
        common += [*SMOKE, "federation.rounds=3", "eval.every=1"]
    common += args.set
    print("[1/3] no deadline", file=sys.stderr, flush=True)
    free = run(common, root / "no_deadline")
    slowest = max(c["virtual_total_s"] for c in free["clients"])
    deadline = args.deadline or round(0.5 * slowest, 3)
    rows = [row("no deadline", None, free)]
    for i, policy in enumerate(("drop", "partial"), 2):
        print(f"[{i}/3] deadline {deadline:g} s, {policy}", file=sys.stderr, flush=True)
        res = run([*common, f"federation.round_deadline_s={deadline}",
                   f"federation.deadline_policy={policy}"], root / policy)  # fmt: skip
        rows.append(row(policy, deadline, res))
    out.mkdir(parents=True, exist_ok=True)
    result = {"mix": args.mix, "deadline_s": deadline, "overrides": common, "rows": rows}
    (out / "deadline.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows))
    print(f"\nwrote {out / 'deadline.json'} (runs under {root})")
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| policy | deadline (s) | final accuracy | virtual time (s) | aggregated | partial "
            "| dropped (deadline) | unavailable | phone steps (mean) | MB total |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        d = "-" if r["deadline_s"] is None else f"{r['deadline_s']:g}"
        lines.append(
            f"| {r['policy']} | {d} | {r['accuracy']:.4f} | {r['virtual_s']:.1f} | "
            f"{r['aggregated']} | {r['partial']} | {r['dropped_deadline']} | {r['unavailable']} | "
            f"{r['phone_steps_mean']:.1f} | {r['mb_total']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
