"""The FedPT table: proxy-tuned large LM vs base and directly fed-LoRA-tuned large LM, device costs, curves.

    Table (~30 min on 2 cores):   .venv/bin/python benchmarks/fedpt_table.py
    Curves too (longer):          .venv/bin/python benchmarks/fedpt_table.py --curves
    Machinery check (~2 min):     .venv/bin/python benchmarks/fedpt_table.py --smoke
Options: --rounds N --set key=value (every FedPT run) --out benchmarks/out
         --direct-set key=value (the direct run only, e.g. its own tuned train.lr)
         --direct RUN_DIR / --fedpt RUN_DIR (reuse finished runs of the same config: no training;
             with --seeds N, give each N times, in seed order)
         --in-process (no Ray)
         --seeds N (seeds 0..N-1, each a table under <out>/seed<N>; then mean +- std over the seeds)
         --config configs/fedpt/qwen_pair.yaml (a real pair: curves = distillation off, the other proxy_from)

The config's run writes <out>/fedpt_table_samples.md: greedy samples of the base, the proxy-tuned
and the directly tuned large LM on the same prompts. Every FedPT run also evaluates the proxy at
--alphas (one training run gives the alpha curve); rows report the configured alpha's gap closed
and the best alpha's, and the config's run its gap closed at every round both runs evaluated
(--set eval.every=N) for every alpha. The curves sweep the emulator's kept
layers (at the configured distillation steps) and its distillation steps (at the configured layers),
plus the per-round distillation switched off; emulator builds continue shorter cached ones.

"Gap closed" is measured on held-out log-perplexity (mean next-token NLL, the quantity training lowers):
(loss_large_base - loss_proxy) / (loss_large_base - loss_large_direct); 1.0 = the proxy matches direct tuning.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, local_ray, mean_std, offline, pm, table_seeds  # noqa: E402

offline()

from engine.config import apply_overrides, read_yaml, validate_config  # noqa: E402

BASE_CONFIG = ROOT / "configs" / "fedpt" / "austen.yaml"
# Direct federated LoRA of the large LM: the same clients, rounds and LoRA, on the large model.
# The reference measures the large LM's device memory but does not drop its clients for it.
DIRECT = ["algorithm=fedavg", "devices.enforce_memory=false"]
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
CURVE_LAYERS = ["first1+last1", "first2+last2", "first4+last4", "first8+last8"]
CURVE_DISTILL = [0, 100, 300]
ALPHAS = "[0.1, 0.25, 0.5, 1.0, 2.0]"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--curves", action="store_true", help="also sweep emulator layers and distillation"
    )
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--config", default=str(BASE_CONFIG), help="the FedPT experiment (e.g. "
                   "configs/fedpt/qwen_pair.yaml: a real pair, no emulator curves)")  # fmt: skip
    p.add_argument("--alphas", default=ALPHAS, help="proxy strengths evaluated in every run")
    p.add_argument("--direct-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the direct run only (after --set), e.g. its tuned "
                        "train.lr")  # fmt: skip
    p.add_argument("--direct", action="append", default=[], metavar="RUN_DIR",
                   help="reuse this direct run (once per seed with --seeds N)")  # fmt: skip
    p.add_argument("--fedpt", action="append", default=[], metavar="RUN_DIR",
                   help="reuse this finished run of the config (its row, curve and samples; "
                        "once per seed with --seeds N)")  # fmt: skip
    p.add_argument("--in-process", action="store_true", help="LocalBackend: no Ray actors")
    p.add_argument("--only", nargs="+", default=None, help="run only variants whose name has one")
    p.add_argument("--plot", nargs="+", default=None, metavar="JSON",
                   help="no runs: plot the curves of these result files into --png")  # fmt: skip
    p.add_argument("--png", default=str(ROOT / "docs" / "img" / "fedpt_curves.png"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--seeds", type=int, default=1,
                   help="run the table at seeds 0..N-1 (each under <out>/seed<N>) and report "
                        "mean +- std over them")  # fmt: skip
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: give 1 or more seeds")
    for flag, dirs in (("--direct", args.direct), ("--fedpt", args.fedpt)):
        if dirs and len(dirs) != args.seeds:
            p.error(f"{flag} given {len(dirs)} times for {args.seeds} seed(s): give it once per "
                    "seed, in seed order, or not at all")  # fmt: skip
    for kv in args.direct_set:
        if "=" not in kv or kv.split("=", 1)[0].strip() in ("", "seed"):
            p.error(f"--direct-set {kv}: give KEY=VALUE for a key other than seed "
                    "(the direct run shares the table's seed)")  # fmt: skip
    if args.seeds > 1 and any(s.split("=", 1)[0].strip() == "seed" for s in args.set):
        p.error("--seeds N sets each run's seed: drop --set seed=...")
    return args


def run(
    config: Path, overrides: list[str], run_dir: Path, in_process: bool = False
) -> dict[str, Any]:
    from actors.launch import start_run
    from engine.backend import LocalBackend

    cfg = validate_config(apply_overrides(read_yaml(config), overrides))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        out = start_run(cfg, out=str(run_dir), backend=LocalBackend() if in_process else None)
    return load_run(out, time.perf_counter() - t0)


def load_run(out: Path, wall_s: float) -> dict[str, Any]:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    clients = [json.loads(x) for x in (out / "clients.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    return {"records": records, "clients": clients, "summary": summary,
            "wall_s": wall_s, "run_dir": str(out)}  # fmt: skip


def reuse_run(config: Path, run_dir: Path, overrides: list[str], flag: str) -> dict[str, Any]:
    """A finished run, only if its config is the one this benchmark would run (`flag` names it)."""
    from engine.config import load_config

    want = validate_config(apply_overrides(read_yaml(config), overrides))
    # sections a fedavg run does not read, and where W&B logged
    unused = {"split", "server", "pruning", "local_loss", "wandb"}
    unused |= {"fedpt"} if want.algorithm == "fedavg" else set()
    have = load_config(run_dir / "config.yaml")
    if have.model_dump(exclude=unused) != want.model_dump(exclude=unused):
        raise SystemExit(f"{flag} {run_dir}: its config differs from this benchmark's run")
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return load_run(run_dir, recs[-1]["time/wall_s"])


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
    by_alpha = {
        float(k[len("eval/proxy@") : -len("_perplexity")]): v
        for k, v in last.items()
        if k.startswith("eval/proxy@") and k.endswith("_perplexity")
    }
    row = {
        "name": name,
        "large_base_ppl": last["eval/large_perplexity"],
        "small_base_ppl": last["eval/small_base_perplexity"],
        "small_tuned_ppl": last["eval/perplexity"],
        "proxy_ppl": last["eval/proxy_perplexity"],
        "proxy_ppl_by_alpha": by_alpha,
        "server_logit_bytes": sum(r.get("server/logit_bytes", 0) for r in res["records"]),
        "wall_s": res["wall_s"],
        **device_costs(res),
    }
    if direct_loss is not None and large > direct_loss:
        closed = lambda ppl: (large - math.log(ppl)) / (large - direct_loss)  # noqa: E731
        row["gap_closed"] = closed(last["eval/proxy_perplexity"])
        row["gap_closed_by_alpha"] = {a: closed(v) for a, v in by_alpha.items()}
        if by_alpha:
            best = min(by_alpha, key=by_alpha.get)
            row["best_alpha"], row["gap_closed_best"] = best, closed(by_alpha[best])
    del proxy
    return row


def round_curve(fedpt: dict[str, Any], direct: dict[str, Any]) -> list[dict[str, Any]]:
    """Gap closed at every round both runs evaluated, for every proxy strength evaluated."""
    direct_at = {
        r["round"]: r["eval/perplexity"] for r in direct["records"] if "eval/perplexity" in r
    }
    out = []
    for r in fedpt["records"]:
        if "eval/proxy_perplexity" not in r or r["round"] not in direct_at:
            continue
        large, target = math.log(r["eval/large_perplexity"]), math.log(direct_at[r["round"]])
        by_alpha = {float(k[len("eval/proxy@") : -len("_perplexity")]): v for k, v in r.items()
                    if k.startswith("eval/proxy@") and k.endswith("_perplexity")}  # fmt: skip
        out.append({
            "round": r["round"], "direct_ppl": direct_at[r["round"]],
            "small_tuned_ppl": r["eval/perplexity"], "proxy_ppl": r["eval/proxy_perplexity"],
            "proxy_ppl_by_alpha": by_alpha,
            "gap_closed_by_alpha": {a: (large - math.log(v)) / (large - target) if large > target
                                    else math.nan for a, v in by_alpha.items()},
        })  # fmt: skip
    return out


def curve_markdown(row: dict[str, Any]) -> str:
    """The config's run: gap closed by round (rows) and proxy strength alpha (columns)."""
    curve = row.get("by_round") or []
    if not curve:
        return ""
    alphas = sorted(curve[0]["gap_closed_by_alpha"])
    lines = [
        f"\n{row['name']}: gap closed by round and alpha (proxy-tuned large ppl in brackets)\n",
        "| round | direct large ppl | tuned small ppl | "
        + " | ".join(f"alpha {a:g}" for a in alphas)
        + " |",
        "|---|---|---|" + "---|" * len(alphas),
    ]
    for c in curve:
        cells = [
            f"{c['gap_closed_by_alpha'][a]:.2f} ({c['proxy_ppl_by_alpha'][a]:.1f})" for a in alphas
        ]
        lines.append(f"| {c['round']} | {c['direct_ppl']:.2f} | {c['small_tuned_ppl']:.2f} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def variants(curves: bool, base: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The FedPT runs: the config, then (curves) distillation off and step and layer sweeps."""
    out = [("FedPT (config)", [])]
    f = base["fedpt"]
    if curves:
        other = "global" if f.get("proxy_from", "global") == "clients" else "clients"
        out += [("no per-round distillation", ["fedpt.distill=false"])]
        out += [(f"proxy_from {other}", [f"fedpt.proxy_from={other}"])]
    if curves and f.get("small_model") is None:  # the emulator's curves (a real pair has none)
        out += [(f"distil {n}", [f"fedpt.emulator_distill_steps={n}"]) for n in CURVE_DISTILL]
        out += [
            (f"layers {x}", [f"fedpt.emulator_layers={x}"]) for x in CURVE_LAYERS
        ]  # a curve point equal to the config is the config's run
    same = {f"fedpt.emulator_layers={f.get('emulator_layers')}",
            f"fedpt.emulator_distill_steps={f.get('emulator_distill_steps')}"}  # fmt: skip
    return [(n, ov) for n, ov in out if not ov or not set(ov) <= same]


def plot_curves(files: list[str], png: str) -> None:
    """Gap closed vs distillation steps and vs layers kept (alpha 1 and the best alpha)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {}
    for f in files:
        for r in json.loads(Path(f).read_text())["rows"]:
            if "gap_closed" in r:
                rows[tuple(r.get("overrides", []))] = r
    layers, steps = (
        _curve(rows, "fedpt.emulator_layers="),
        _curve(rows, "fedpt.emulator_distill_steps="),
    )
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, pts, xlabel in ((axes[0], steps, "emulator distillation steps (first4+last4)"),
                            (axes[1], layers, "decoder layers kept of 30 (100 distillation steps)")):  # fmt: skip
        xs = [x for x, _ in pts]
        ax.plot(xs, [r["gap_closed"] for _, r in pts], "o-", label="alpha = 1")
        ax.plot(xs, [r["gap_closed_best"] for _, r in pts], "s--", label="best alpha of 0.1-2")
        for x, r in pts:
            ax.annotate(f"small {r['small_base_ppl']:.0f}", (x, r["gap_closed_best"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=8)  # fmt: skip
            if r["gap_closed"] < -0.3:  # off the axis: say where
                ax.annotate(f"alpha 1: {r['gap_closed']:.1f}", (x, -0.28), fontsize=8)
        ax.axhline(0.5, color="grey", ls=":", label="target: half the gap")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gap closed to direct fed-LoRA (log-perplexity)")
    axes[0].set_ylim(-0.3, 0.6)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("FedPT on SmolLM2-135M (per-round distillation off): proxy-tuned large LM vs emulator "
                 f"size and distillation (labels: emulator base perplexity; large LM "
                 f"{next(iter(rows.values()))['large_base_ppl']:.1f})", fontsize=9)  # fmt: skip
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    print(png)


def _curve(rows: dict, prefix: str) -> list[tuple[int, dict]]:
    """(x, row) for the runs that vary one key (distillation off); the config's run at its value."""
    base = rows.get(("fedpt.distill=false",))
    pts = []
    for ov, r in rows.items():
        keys = [o for o in ov if o.startswith(prefix)]
        if keys and "fedpt.distill=false" in ov or (keys and len(ov) == 1):
            v = keys[0].split("=", 1)[1]
            pts.append((_layers(v) if "layers" in prefix else int(v), r))
    if base is not None:
        pts.append((8 if "layers" in prefix else 100, base))
    return sorted(pts, key=lambda p: p[0])


def _layers(spec: str) -> int:
    return sum(
        int(part[5:]) if part.startswith("first") else int(part[4:]) for part in spec.split("+")
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot:
        plot_curves(args.plot, args.png)
        return 0
    common = list(SMOKE if args.smoke else [])
    if args.rounds:
        common += [f"federation.rounds={args.rounds}", f"eval.every={args.rounds}"]
    common += ["wandb.mode=disabled", *args.set]
    stem = "fedpt_table" + ("_smoke" if args.smoke else "")
    out = Path(args.out)
    if args.seeds == 1:
        print(table(args, common, stem, out, *_reused(args, 0)), flush=True)
        return 0
    tables, seeds = [], table_seeds(args.seeds, tuned=False)
    for i, seed in enumerate(seeds):
        print(f"==== seed {seed}", file=sys.stderr, flush=True)
        table(args, [*common, f"seed={seed}"], stem, out / f"seed{seed}", *_reused(args, i))
        tables.append(json.loads((out / f"seed{seed}" / f"{stem}.json").read_text()))
        print(write_seeds(out, stem, seed_summary(tables), seeds), flush=True)
    return 0


def _reused(args: argparse.Namespace, i: int) -> tuple[Path | None, Path | None]:
    """The i-th seed's finished direct and FedPT runs to reuse (None: run it)."""
    direct, fedpt = (Path(d[i]) if d else None for d in (args.direct, args.fedpt))
    return direct, fedpt


def table(args: argparse.Namespace, common: list[str], stem: str, out: Path,
          reuse_direct: Path | None = None, reuse_fedpt: Path | None = None) -> str:  # fmt: skip
    """One seed's table: the direct run, then every FedPT variant; written after every run."""
    root = out / f"{stem}_runs" / time.strftime("%Y%m%d-%H%M%S")
    config = Path(args.config)
    base = apply_overrides(read_yaml(config), common)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    direct_overrides = [*common, *DIRECT, *args.direct_set]
    with contextlib.nullcontext() if args.in_process else local_ray(None):
        if reuse_direct:
            direct = reuse_run(config, reuse_direct, direct_overrides, "--direct")
        else:
            print("== direct federated LoRA of the large LM", file=sys.stderr, flush=True)
            direct = run(config, direct_overrides, root / "direct", args.in_process)
        d_last = [r for r in direct["records"] if "eval/perplexity" in r][-1]
        direct_row = {"name": "direct fed-LoRA large", "direct_ppl": d_last["eval/perplexity"],
                      "wall_s": direct["wall_s"], "run_dir": direct["run_dir"],
                      "overrides": args.direct_set, **device_costs(direct)}  # fmt: skip
        direct_loss = math.log(d_last["eval/perplexity"])
        chosen = [(n, ov) for n, ov in variants(args.curves, base)
                  if args.only is None or any(o in n for o in args.only)]  # fmt: skip
        for name, extra in chosen:
            print(f"== {name}", file=sys.stderr, flush=True)
            overrides = [*common, f"fedpt.eval_alphas={args.alphas}", *extra]
            try:
                if reuse_fedpt and not extra:
                    res = reuse_run(config, reuse_fedpt, overrides, "--fedpt")
                else:
                    res = run(config, overrides, root / name.replace(" ", "_"), args.in_process)
                rows.append({**fedpt_row(name, res, direct_loss), "overrides": extra,
                             "by_round": round_curve(res, direct)})  # fmt: skip
                if not extra:  # the config's run: its samples beside the direct run's
                    print(
                        side_by_side_samples(res, direct, out / f"{stem}_samples.md"),
                        file=sys.stderr,
                    )
            except Exception as exc:  # a failed variant is a row
                traceback.print_exc(file=sys.stderr)
                rows.append({"name": name, "error": f"{type(exc).__name__}: {exc}"[:200]})
            write(out, stem, rows, direct_row, common, time.perf_counter() - t0, config)
    return write(out, stem, rows, direct_row, common, time.perf_counter() - t0, config)


def _vs_direct(key: str) -> Any:
    return lambda r, d: r[key] / d[key]


# a variant's per-seed figures that the seeds summary averages (device costs vs the direct run's)
SEED_STATS = {
    "gap closed": lambda r, d: r.get("gap_closed", math.nan),
    "proxy / base large ppl": lambda r, d: r["proxy_ppl"] / r["large_base_ppl"],
    "device bytes vs direct": _vs_direct("bytes_per_client_round"),
    "device FLOPs vs direct": _vs_direct("flops_per_client_round"),
    "device peak memory vs direct": _vs_direct("peak_memory_bytes"),
}


def seed_summary(tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant (in every seed's table, none failed): each SEED_STATS figure and the gap closed at
    every alpha, by seed and as mean +- sample std; seeds in the order of `tables`."""
    names = [r["name"] for r in tables[0]["rows"]]
    out = []
    for name in names:
        pairs = [(next((r for r in t["rows"] if r["name"] == name), None), t["direct"])
                 for t in tables]  # fmt: skip
        if any(r is None or "error" in r for r, _ in pairs):
            continue
        stats = {k: [f(r, d) for r, d in pairs] for k, f in SEED_STATS.items()}
        for a in pairs[0][0].get("gap_closed_by_alpha", {}):  # JSON keys: "0.5"
            stats[f"gap closed, alpha {float(a):g}"] = [
                r.get("gap_closed_by_alpha", {}).get(a, math.nan) for r, _ in pairs
            ]
        out.append({"name": name, "by_seed": stats,
                    **{k: mean_std(v) for k, v in stats.items()}})  # fmt: skip
    return out


def write_seeds(out: Path, stem: str, summary: list[dict[str, Any]], seeds: list[int]) -> str:
    """<out>/<stem>_seeds.{json,md}: one row per variant and figure, the seeds run so far in columns."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}_seeds.json").write_text(json.dumps(summary, indent=1) + "\n")
    n = len(summary[0]["by_seed"]["gap closed"]) if summary else 0
    lines = ["| run | figure | " + " | ".join(f"seed {s}" for s in seeds[:n]) + " | mean +- std |",
             "|---|---|" + "---|" * (n + 1)]  # fmt: skip
    for v in summary:
        for k, xs in v["by_seed"].items():
            m, sd = v[k]
            cells = " | ".join(f"{x:.3f}" for x in xs)
            lines.append(f"| {v['name']} | {k} | {cells} | {pm(m, sd, len(xs))} |")
    md = "\n".join(lines) + "\n"
    (out / f"{stem}_seeds.md").write_text(md)
    return md


def side_by_side_samples(fedpt: dict[str, Any], direct: dict[str, Any], path: Path) -> Path | None:
    """Greedy samples of the base, proxy-tuned and directly tuned large LM on the same prompts
    (FedPT's samples.md and `fedray samples` on the direct run), written to `path`."""
    from engine.config import load_config
    from engine.lm.samples import from_markdown, merge, to_markdown
    from engine.run_samples import run_samples

    fedpt_dir = Path(fedpt["run_dir"])
    if not (fedpt_dir / "samples.md").is_file():
        return None  # fedpt.generate: 0
    f = load_config(fedpt_dir / "config.yaml").fedpt
    direct_md = run_samples(direct["run_dir"], f.generate, f.generate_tokens).read_text()
    # the direct run's base is the black box itself: one "base large" line (kept apart if it differs)
    direct_samples = [
        (prompt, {("directly tuned large" if k.startswith("tuned") else "base large (direct run)"): v
                  for k, v in outs.items()})
        for prompt, outs in from_markdown(direct_md)
    ]  # fmt: skip
    samples = merge(from_markdown((fedpt_dir / "samples.md").read_text()), direct_samples)
    for _, outs in samples:
        if outs.get("base large (direct run)") == outs["base large"]:
            del outs["base large (direct run)"]
    text = to_markdown(f"FedPT {fedpt_dir.name} and direct {Path(direct['run_dir']).name}", samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write(out: Path, stem: str, rows: list, direct_row: dict, common: list, wall: float,
          config: Path) -> str:  # fmt: skip
    """The table so far (after every run: a long sweep keeps what it measured)."""
    md = markdown(rows, direct_row) + "".join(curve_markdown(r) for r in rows if "by_round" in r)
    md += f"\ntotal wall time {wall:.0f} s; base {config.name} {' '.join(common)}\n"
    if direct_row.get("overrides"):
        md += f"direct run also: {' '.join(direct_row['overrides'])}\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"rows": rows, "direct": direct_row,
                                                  "overrides": common}, indent=1) + "\n")  # fmt: skip
    (out / f"{stem}.md").write_text(md)
    return md


def markdown(rows: list[dict[str, Any]], direct: dict[str, Any]) -> str:
    lines = [
        "| run | large base ppl | small base ppl | small tuned ppl | proxy-tuned large ppl | "
        "direct large ppl | gap closed | best alpha: ppl (gap closed) | device MB/round | "
        "device GFLOPs/round | device peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} ||||||||||")
            continue
        lines.append(
            f"| {r['name']} | {r['large_base_ppl']:.2f} | {r['small_base_ppl']:.1f} | "
            f"{r['small_tuned_ppl']:.2f} | {r['proxy_ppl']:.2f} | {direct['direct_ppl']:.2f} | "
            f"{r.get('gap_closed', math.nan):.2f} | {best_alpha(r)} | "
            f"{r['bytes_per_client_round'] / 1e6:.2f} | "
            f"{r['flops_per_client_round'] / 1e9:.1f} | {r['peak_memory_bytes'] / 2**20:.0f} |"
        )
    lines.append(
        f"| direct fed-LoRA large | | | | | {direct['direct_ppl']:.2f} | 1 | | "
        f"{direct['bytes_per_client_round'] / 1e6:.2f} | {direct['flops_per_client_round'] / 1e9:.1f} | "
        f"{direct['peak_memory_bytes'] / 2**20:.0f} |"
    )
    return "\n".join(lines) + "\n"


def best_alpha(row: dict[str, Any]) -> str:
    if "best_alpha" not in row:
        return ""
    a = row["best_alpha"]
    return f"{a:g}: {row['proxy_ppl_by_alpha'][a]:.2f} ({row['gap_closed_best']:.2f})"


if __name__ == "__main__":
    sys.exit(main())
