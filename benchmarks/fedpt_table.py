"""The FedPT table: proxy-tuned large LM vs base and directly fed-LoRA-tuned large LM, device costs, curves.

    Table (~30 min on 2 cores):   .venv/bin/python benchmarks/fedpt_table.py
    Curves too (longer):          .venv/bin/python benchmarks/fedpt_table.py --curves
    Machinery check (~2 min):     .venv/bin/python benchmarks/fedpt_table.py --smoke
Options: --rounds N --set key=value (every FedPT run) --out benchmarks/out

"Gap closed" is measured on held-out log-perplexity (mean next-token NLL, the quantity training lowers):
(loss_large_base - loss_proxy) / (loss_large_base - loss_large_direct); 1.0 = the proxy matches direct tuning.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.config import apply_overrides, read_yaml, validate_config  # noqa: E402

BASE_CONFIG = ROOT / "configs" / "fedpt" / "austen.yaml"
# Direct federated LoRA of the large LM: the same clients, rounds and LoRA, on the large model.
DIRECT = ["algorithm=fedavg"]
SMOKE = [
    "model.name=tiny-llama-random",
    "model.max_length=32",
    "data.max_train_samples=240",
    "data.max_test_samples=24",
    "federation.rounds=2",
    "eval.every=2",
    "fedpt.emulator_layers=first1",
    "fedpt.emulator_distill_steps=2",
    "fedpt.public_fraction=0.1",
    "fedpt.distill_steps=2",
    "fedpt.distill_batch_size=4",
]
CURVE_LAYERS = ["first1+last1", "first2+last2", "first4+last4", "every3"]
CURVE_DISTILL = [0, 100, 300]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--curves", action="store_true", help="also sweep emulator layers and distillation"
    )
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    return p.parse_args(argv)


def run(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    from engine.runner import start_run

    cfg = validate_config(apply_overrides(read_yaml(BASE_CONFIG), overrides))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        out = start_run(cfg, out=str(run_dir))
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    clients = [json.loads(x) for x in (out / "clients.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    return {"records": records, "clients": clients, "summary": summary,
            "wall_s": time.perf_counter() - t0, "run_dir": str(out)}  # fmt: skip


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def device_costs(res: dict[str, Any]) -> dict[str, float]:
    c = res["clients"]
    return {
        "bytes_per_client_round": _mean([x["bytes_up"] + x["bytes_down"] for x in c]),
        "flops_per_client_round": _mean([x["flops"] for x in c]),
        "peak_memory_bytes": max(x["peak_memory_bytes"] for x in c),
        "client_params": res["summary"]["total_params"],
        "trainable_params": res["summary"]["trainable_params"],
    }


def fedpt_row(name: str, res: dict[str, Any], direct_loss: float | None) -> dict[str, Any]:
    last = [r for r in res["records"] if "eval/proxy_perplexity" in r][-1]
    large, proxy = math.log(last["eval/large_perplexity"]), math.log(last["eval/proxy_perplexity"])
    row = {
        "name": name,
        "large_base_ppl": last["eval/large_perplexity"],
        "small_base_ppl": last["eval/small_base_perplexity"],
        "small_tuned_ppl": last["eval/perplexity"],
        "proxy_ppl": last["eval/proxy_perplexity"],
        "server_logit_bytes": sum(r.get("server/logit_bytes", 0) for r in res["records"]),
        "wall_s": res["wall_s"],
        **device_costs(res),
    }
    if direct_loss is not None and large > direct_loss:
        row["gap_closed"] = (large - proxy) / (large - direct_loss)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common = list(SMOKE if args.smoke else [])
    if args.rounds:
        common += [f"federation.rounds={args.rounds}", f"eval.every={args.rounds}"]
    common += ["wandb.mode=disabled", *args.set]
    stem = "fedpt_table" + ("_smoke" if args.smoke else "")
    out = Path(args.out)
    root = out / f"{stem}_runs" / time.strftime("%Y%m%d-%H%M%S")
    from actors.cluster import init_ray

    started = init_ray(None, None, False)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        print("== direct federated LoRA of the large LM", file=sys.stderr, flush=True)
        direct = run([*common, *DIRECT], root / "direct")
        d_last = [r for r in direct["records"] if "eval/perplexity" in r][-1]
        direct_row = {"name": "direct fed-LoRA large", "direct_ppl": d_last["eval/perplexity"],
                      "wall_s": direct["wall_s"], **device_costs(direct)}  # fmt: skip
        direct_loss = math.log(d_last["eval/perplexity"])
        variants = [("FedPT (config)", [])]
        if args.curves:
            variants += [(f"layers {x}", [f"fedpt.emulator_layers={x}"]) for x in CURVE_LAYERS]
            variants += [
                (f"distil {s}", [f"fedpt.emulator_distill_steps={s}"]) for s in CURVE_DISTILL
            ]
        for name, extra in variants:
            print(f"== {name}", file=sys.stderr, flush=True)
            try:
                rows.append(
                    fedpt_row(
                        name, run([*common, *extra], root / name.replace(" ", "_")), direct_loss
                    )
                )
            except Exception as exc:  # a failed variant is a row
                traceback.print_exc(file=sys.stderr)
                rows.append({"name": name, "error": f"{type(exc).__name__}: {exc}"[:200]})
    finally:
        if started:
            import ray

            ray.shutdown()
    md = markdown(rows, direct_row)
    md += f"\ntotal wall time {time.perf_counter() - t0:.0f} s; base {BASE_CONFIG.name} {' '.join(common)}\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"rows": rows, "direct": direct_row,
                                                  "overrides": common}, indent=1) + "\n")  # fmt: skip
    (out / f"{stem}.md").write_text(md)
    print(md, flush=True)
    return 0


def markdown(rows: list[dict[str, Any]], direct: dict[str, Any]) -> str:
    lines = [
        "| run | large base ppl | small base ppl | small tuned ppl | proxy-tuned large ppl | "
        "direct large ppl | gap closed | device MB/round | device GFLOPs/round | device peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} |||||||||")
            continue
        lines.append(
            f"| {r['name']} | {r['large_base_ppl']:.2f} | {r['small_base_ppl']:.1f} | "
            f"{r['small_tuned_ppl']:.2f} | {r['proxy_ppl']:.2f} | {direct['direct_ppl']:.2f} | "
            f"{r.get('gap_closed', math.nan):.2f} | {r['bytes_per_client_round'] / 1e6:.2f} | "
            f"{r['flops_per_client_round'] / 1e9:.1f} | {r['peak_memory_bytes'] / 2**20:.0f} |"
        )
    lines.append(
        f"| direct fed-LoRA large | | | | | {direct['direct_ppl']:.2f} | 1 | "
        f"{direct['bytes_per_client_round'] / 1e6:.2f} | {direct['flops_per_client_round'] / 1e9:.1f} | "
        f"{direct['peak_memory_bytes'] / 2**20:.0f} |"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
