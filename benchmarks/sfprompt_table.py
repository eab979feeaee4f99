"""The SFPrompt table: SFPrompt, its ablations, SplitFed and FedFT as real fedray runs, plus the
bytes crossover between split traffic (grows with samples) and FedFT traffic (grows with the model).

    Table (~40 min on 2 cores):    .venv/bin/python benchmarks/sfprompt_table.py
    Crossover only (~5 min):       .venv/bin/python benchmarks/sfprompt_table.py --only crossover
    Machinery check (~2 min):      .venv/bin/python benchmarks/sfprompt_table.py --smoke
Options: --rounds 8 --set key=value (every table run) --out benchmarks/out
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, offline, run_experiment  # noqa: E402

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
ROWS: dict[str, list[str]] = {
    "FedFT": ["algorithm=fedavg", "method.name=full", "train.lr=5e-5"],
    "SFPrompt": [],
    "SFPrompt w/o pruning": ["pruning.enabled=false"],
    "SFPrompt w/o local loss": ["local_loss.enabled=false"],
    # The cut with no block on the client: head = embeddings + prompts, tail = classifier.
    "SFPrompt zero-block cut": ["split.head_layers=0", "split.tail_layers=0"],
    # SplitFed: the same split, no prompts; the client trains its head and tail, the server its body.
    "SplitFed": [
        "split.prompt_length=0",
        "split.train_head=true",
        "server.train_body=true",
        "pruning.enabled=false",
        "local_loss.enabled=false",
        "train.lr=5e-5",
    ],
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
TARGET_FLOPS_PCT, TARGET_POINTS = 1.0, 3.0  # client FLOPs <= 1% of FedFT; accuracy within 3 points


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("table", "crossover"), default=None)
    p.add_argument("--rows", default=",".join(ROWS), help="comma list of " + ", ".join(ROWS))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--smoke", action="store_true", help="tiny random BERT, 2 rounds")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    return p.parse_args(argv)


def run(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """One real fedray run in-process on the shared local Ray: its summary and records."""
    return run_experiment(BASE_CONFIG, overrides, run_dir)


def table(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    common = [*TABLE_OVERRIDES, f"federation.rounds={args.rounds}", f"eval.every={args.rounds}"]
    if args.smoke:
        common += SMOKE_OVERRIDES
    common += args.set
    rows = []
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    for i, name in enumerate(names, 1):
        _progress(f"[{i}/{len(names)}] {name}")
        try:
            res = run([*common, *ROWS[name]], root / name.replace(" ", "_").replace("/", ""))
            s = res["summary"]
            rounds = max(s["rounds_completed"], 1)
            per_client_round = [c["bytes_up"] + c["bytes_down"] for c in res["clients"]]
            rows.append({
                "name": name,
                "accuracy": s["metrics"].get("accuracy"),
                "macro_f1": s["metrics"].get("macro_f1"),
                "client_flops_per_round": s["client_flops_per_round"],
                "bytes_per_client_round": sum(per_client_round) / max(len(per_client_round), 1),
                "bytes_per_round": s["comm_bytes_total"] / rounds,
                "bytes_by_kind": s["comm_bytes_by_kind"],
                "client_peak_memory_bytes": s["client_peak_memory_bytes"],
                "trainable_params": s["trainable_params"],
                "client_params": s["total_params"],
                "wall_s": res["wall_s"],
            })  # fmt: skip
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
            "| run | accuracy | macro-F1 | client GFLOPs/round | % of FedFT | MB/round | % of FedFT | "
            "client peak MB | wall s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['name']} | failed: {r['error']} |||||||| ")
                continue
            lines.append(
                f"| {r['name']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
                f"{r['client_flops_per_round'] / 1e9:.3g} | {r.get('flops_pct_of_fedft', math.nan):.2g} | "
                f"{r['bytes_per_round'] / 1e6:.1f} | {r.get('bytes_pct_of_fedft', math.nan):.1f} | "
                f"{r['client_peak_memory_bytes'] / 2**20:.1f} | {r['wall_s']:.0f} |"
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


def _progress(msg: str) -> None:
    print(f"== {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.rounds = 2  # what SMOKE_OVERRIDES run
    stem = "sfprompt_table" + ("_smoke" if args.smoke else "")
    out = Path(args.out)
    root = out / f"{stem}_runs" / time.strftime("%Y%m%d-%H%M%S")
    from actors.cluster import init_ray

    started = init_ray(None, args.num_cpus, False)
    t0 = time.perf_counter()
    try:
        rows = table(args, root) if args.only in (None, "table") else []
        cross = crossover(args, root) if args.only in (None, "crossover") else None
    finally:
        if started:
            import ray

            ray.shutdown()
    md = markdown(rows, cross)
    md += f"\ntotal wall time {time.perf_counter() - t0:.0f} s; base {BASE_CONFIG.name}, "
    md += f"{args.rounds} rounds, {' '.join(TABLE_OVERRIDES + args.set)}\n"
    out.mkdir(parents=True, exist_ok=True)
    report = {"rows": rows, "crossover": cross, "rounds": args.rounds, "smoke": args.smoke,
              "overrides": TABLE_OVERRIDES + args.set, "runs_root": str(root)}  # fmt: skip
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out / f"{stem}.md").write_text(md)
    print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
