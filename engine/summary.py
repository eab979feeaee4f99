"""summary.json (final and best metrics, totals) and the results table printed at the end of a run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from engine.ledger import Ledger
from engine.versions import stack_versions

# Metrics where lower is better; every other eval metric is maximised.
LOWER_IS_BETTER = {"loss", "perplexity"}


def best_of(history: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """For each eval metric, its best value and the round it was reached (first one on ties)."""
    best: dict[str, dict[str, float]] = {}
    for rec in history:
        for key, value in rec.items():
            if not key.startswith("eval/") or not isinstance(value, int | float) or "wall" in key:
                continue
            name = key.removeprefix("eval/")
            lower = name in LOWER_IS_BETTER
            cur = best.get(name)
            if cur is None or (value < cur["value"] if lower else value > cur["value"]):
                best[name] = {"value": float(value), "round": int(rec["round"])}
    return best


def selected_of(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """eval.select: validation: the round with the best validation accuracy (classification) or
    loss (LM; first one on ties) and the test metrics there; None when nothing was validated."""
    scored = [rec for rec in history if "val/loss" in rec]
    if not scored:
        return None
    by = "loss" if "val/perplexity" in scored[0] else "accuracy"  # LM: token accuracy is no score
    sign = -1.0 if by in LOWER_IS_BETTER else 1.0
    pick = max(scored, key=lambda rec: sign * rec[f"val/{by}"])  # max keeps the first of ties
    metrics = {k.removeprefix("eval/"): v for k, v in pick.items() if k.startswith("eval/")}
    return {
        "by": f"val/{by}",
        "round": int(pick["round"]),
        "validation": float(pick[f"val/{by}"]),
        "metrics": {k: v for k, v in metrics.items() if "wall" not in k},
    }


def final_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    for rec in reversed(history):
        found = {k.removeprefix("eval/"): v for k, v in rec.items() if k.startswith("eval/")}
        if found:
            return found
    return {}


DEVICE_PEAK = "memory/device_peak_bytes/"


def build_summary(
    history, ledger: Ledger, info, cfg, startup_s: float, virtual_s: float, method: str
) -> dict:
    """summary.json; `method`: the method column (the algorithm's label, e.g. SFPrompt's split)."""
    per_client = [c for r in ledger.rounds() for c in ledger.round_totals(r)["per_client"].values()]
    up = ledger.total_bytes("up")
    down = ledger.total_bytes("down")
    return {
        "name": cfg.name,
        "algorithm": cfg.algorithm,
        "strategy": cfg.federation.strategy,
        "method": method,
        "eval_split": cfg.eval.split,  # eval/* metrics: the test split or the held-out validation rows
        "comm_bytes_by_kind": ledger.bytes_by_kind(),
        "metrics": final_metrics(history),
        "best": best_of(history),
        # eval.select: validation: the test metrics at the round the validation rows chose
        "selected": selected_of(history),
        "rounds_completed": len(history),
        "comm_bytes_up": up,
        "comm_bytes_down": down,
        "comm_bytes_total": up + down,
        "bytes_up_per_client_round": float(np.mean([c["up"] for c in per_client]))
        if per_client
        else 0.0,
        "client_flops_per_round": float(np.mean([c["flops"] for c in per_client]))
        if per_client
        else 0.0,
        "client_peak_memory_bytes": int(
            max((c["peak_memory_bytes"] for c in per_client), default=0)
        ),
        # The largest GPU allocation a client worker of each device measured (absent on CPUs).
        "device_peak_bytes": {
            k.rsplit("/", 1)[1]: max(int(r[k]) for r in history if k in r)
            for k in sorted({k for r in history for k in r if k.startswith(DEVICE_PEAK)})
        },
        "gpu_packing": info.get("gpu_packing"),  # what client_num_gpus: auto chose, if it packed
        "trainable_params": info["trainable_params"],
        "total_params": info["total_params"],
        "wall_s": history[-1]["time/wall_s"] if history else 0.0,
        "startup_s": startup_s,
        "virtual_s": virtual_s,
        "versions": stack_versions(),
    }


def print_table(cfg, summary: dict, best: dict, run_dir: Path) -> None:
    """A plain, aligned results table on stdout."""
    rows = [
        ("run directory", str(run_dir)),
        ("algorithm / method", f"{cfg.algorithm} / {summary['method']}"),
    ]
    if cfg.federation.strategy != "fedavg":
        rows.append(("strategy", cfg.federation.strategy))
    if cfg.eval.split != "test":
        rows.append(
            ("evaluated on", f"{cfg.eval.split} (held-out training rows, not the test split)")
        )
    for name, value in summary["metrics"].items():
        if "wall" in name:
            continue
        b = best.get(name)
        extra = f"   (best {b['value']:.4f} @ round {b['round']})" if b else ""
        rows.append((f"eval {name}", f"{value:.4f}{extra}"))
    chosen = summary.get("selected")
    if chosen:
        test = ", ".join(f"{k} {v:.4f}" for k, v in chosen["metrics"].items())
        rows.append(
            (
                "selected on validation",
                f"round {chosen['round']} ({chosen['by']} {chosen['validation']:.4f}): {test}",
            )
        )
    rows += [
        ("rounds", str(summary["rounds_completed"])),
        (
            "trainable / total params",
            f"{summary['trainable_params']:,} / {summary['total_params']:,}",
        ),
        ("MB up per client per round", f"{summary['bytes_up_per_client_round'] / 1e6:.4f}"),
        ("MB communicated (total)", f"{summary['comm_bytes_total'] / 1e6:.2f}"),
        ("client GFLOPs per round", f"{summary['client_flops_per_round'] / 1e9:.2f}"),
        ("client peak memory (MB)", f"{summary['client_peak_memory_bytes'] / 2**20:.1f}"),
        *(
            (f"GPU peak per {device} worker (MB)", f"{peak / 2**20:.1f}")
            for device, peak in summary.get("device_peak_bytes", {}).items()
        ),
        ("virtual time (s)", f"{summary['virtual_s']:.1f}"),
        ("wall time (s)", f"{summary['wall_s']:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 40)
    out = [line] + [f"{k.ljust(width)}  {v}" for k, v in rows] + [line]
    print("\n".join(out), file=sys.stdout, flush=True)


def print_round(record: dict[str, Any]) -> None:
    """One line per round on stderr (sys.stderr.write: Ray Train patches print() in its workers)."""
    msg = f"round {record['round']}: train loss {record['train/loss']:.4f}"
    if "eval/accuracy" in record:
        msg += f", eval accuracy {record['eval/accuracy']:.4f}, eval loss {record['eval/loss']:.4f}"
    if "val/accuracy" in record:
        msg += f", validation accuracy {record['val/accuracy']:.4f}"
    n = record.get("clients/completed", 0)
    if n:
        msg += f", {record['comm/bytes_up'] / 1e6:.3f} MB up from {n} clients"
    sys.stderr.write(msg + f", {record['time/round_wall_s']:.1f}s\n")
    sys.stderr.flush()
