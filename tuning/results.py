"""A sweep's results: one row per trial from its fedray run, as JSON, CSV, a table and the best YAML."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from engine.config import RunConfig, dump_config
from engine.rundir import atomic_write, read_metrics
from tuning.score import score, score_name
from tuning.sweep import SweepConfig, axes, trial_config
from tuning.trial import RUN

RESULTS = "results.json"
COLUMNS = [
    "trial_id",
    "status",
    "final",
    "score",
    "best",
    "bytes_total",
    "client_flops",
    "virtual_s",
]


def trial_row(sweep: SweepConfig, trial_dir: Path, params: dict, error: str | None) -> dict:
    """What one trial measured, read from its run directory (metrics.jsonl, summary.json): its
    final and best metric and its score (sweep.score_window; the final value with a window of 1)."""
    run = trial_dir / RUN
    records = read_metrics(run)
    values = [r[sweep.metric] for r in records if sweep.metric in r]
    summary_file = run / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    pick = max if sweep.mode == "max" else min
    last = records[-1] if records else {}
    status = "ERROR" if error else "TERMINATED" if summary else "STOPPED" if records else "PENDING"
    return {
        "trial_id": trial_dir.name,
        "params": params,
        "status": status,
        "error": error,
        "final": values[-1] if values else None,
        "score": score(values, sweep.score_window),
        "best": pick(values) if values else None,
        "rounds": last.get("round"),
        "bytes_total": last.get("comm/bytes_total_cum"),
        "client_flops": summary.get("client_flops_per_round"),
        "virtual_s": last.get("time/virtual_s"),
        "run_dir": str(run) if records else None,
    }


def collect(sweep: SweepConfig, sweep_dir: Path, grid: Any) -> list[dict]:
    """Rows for every trial of a Tune ResultGrid, in trial-id order."""
    rows = []
    for result in grid:
        trial_dir = sweep_dir / "trials" / Path(result.path).name
        error = None
        if result.error is not None:  # Ray wraps the trial's exception: its last line names it
            lines = [x.strip() for x in str(result.error).splitlines() if x.strip()]
            error = (lines[-1] if lines else type(result.error).__name__)[:300]
        params = {k: result.config[k] for k in axes(sweep) if k in result.config}
        rows.append(trial_row(sweep, trial_dir, params, error))
    return sorted(rows, key=lambda r: r["trial_id"])


def _finished(row: dict) -> bool:
    return row["score"] is not None and math.isfinite(row["score"])


def best_row(sweep: SweepConfig, rows: list[dict]) -> dict | None:
    """The trial with the best score (a tie: the first in trial-id order)."""
    done = [r for r in rows if _finished(r)]
    if not done:
        return None
    sign = 1 if sweep.mode == "max" else -1
    return max(done, key=lambda r: sign * r["score"])


def settings(sweep: SweepConfig, rows: list[dict]) -> list[dict]:
    """With a seeds list: one entry per setting (the trial parameters less `seed`), its trials'
    final metrics and scores over the seeds whose run went through every round, and the scores'
    mean, sample std, min and max (a trial that failed or was stopped early counts in `missing`),
    in the order the trials first show it."""
    groups: dict[str, dict] = {}
    for r in rows:
        params = {k: v for k, v in r["params"].items() if k != "seed"}
        key = json.dumps(params, sort_keys=True, default=str)
        g = groups.setdefault(
            key, {"params": params, "seeds": [], "finals": [], "scores": [], "missing": []}
        )
        if r["status"] == "TERMINATED" and _finished(r):
            g["seeds"].append(r["params"].get("seed"))
            g["finals"].append(r["final"])
            g["scores"].append(r["score"])
        else:
            g["missing"].append(r["params"].get("seed"))
    for g in groups.values():
        f = g["scores"]
        g["n"] = len(f)
        g["mean"] = statistics.fmean(f) if f else None
        g["std"] = statistics.stdev(f) if len(f) > 1 else 0.0 if f else None
        g["min"], g["max"] = (min(f), max(f)) if f else (None, None)
    return list(groups.values())


def best_setting(sweep: SweepConfig, groups: list[dict]) -> dict | None:
    """The setting with the best mean score (a tie: the one listed first)."""
    done = [g for g in groups if g["mean"] is not None]
    if not done:
        return None
    sign = 1 if sweep.mode == "max" else -1
    return max(done, key=lambda g: sign * g["mean"])


def ties(best: dict, entries: list[dict], key: str) -> int:
    """How many entries other than `best` have exactly its `key`: a trial's score, or a setting's
    mean score over seeds."""
    return sum(e is not best and e.get(key) == best[key] for e in entries)


def grid_edges(sweep: SweepConfig, params: dict[str, Any]) -> dict[str, str]:
    """The numeric grid axes (3 values or more) on which `params` (the best trial's or setting's)
    took the grid's largest or smallest value: {axis: "largest" | "smallest"}. There the best
    may lie beyond the grid."""
    out = {}
    for key, spec in sweep.space.items():
        values = spec.get("grid")
        numeric = values is not None and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        )
        if not numeric or len(set(values)) < 3 or key not in params:
            continue
        if params[key] == max(values):
            out[key] = "largest"
        elif params[key] == min(values):
            out[key] = "smallest"
    return out


def write_results(
    sweep: SweepConfig, base: RunConfig, sweep_dir: Path, rows: list[dict], wall_s: float
) -> str:
    """results.json / results.csv / results.md / best.yaml in the sweep directory; prints the table."""
    names = axes(sweep)
    meta = {"name": sweep.name, "metric": sweep.metric, "mode": sweep.mode, "axes": names,
            "base": sweep.base, "wall_s": wall_s, "seeds": sweep.seeds,
            "score_window": sweep.score_window}  # fmt: skip
    data: dict[str, Any] = {"sweep": meta, "rows": rows}
    groups = settings(sweep, rows) if sweep.seeds else None
    if groups is not None:
        data["settings"] = groups
        best = best_setting(sweep, groups)
    else:
        best = best_row(sweep, rows)
    edges = grid_edges(sweep, best["params"]) if best is not None else {}
    data["best_at_grid_edge"] = edges
    atomic_write(sweep_dir / RESULTS, json.dumps(data, indent=1) + "\n")
    tmp = sweep_dir / "results.csv.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["trial_id", *names, *COLUMNS[1:], "error"])
        for r in rows:
            w.writerow([r["trial_id"], *(r["params"].get(a) for a in names),
                        *(r[c] for c in COLUMNS[1:]), r["error"] or ""])  # fmt: skip
    tmp.replace(sweep_dir / "results.csv")
    table = markdown(sweep, rows)
    if groups is not None:
        table += "\n" + settings_markdown(sweep, groups)
    if best is not None:
        name = score_name(sweep.metric, sweep.score_window)
        if groups is not None:  # the setting's params hold no seed: best.yaml has the base one
            what = (
                f"setting {best['params']}: {name} = {best['mean']:.4g} +- {best['std']:.2g} "
                f"over seeds {best['seeds']}"
            )
        else:
            what = f"trial {best['trial_id']} {best['params']}: {name} = {best['score']:.4g}"
        cfg = trial_config(sweep, best["params"])
        atomic_write(
            sweep_dir / "best.yaml", f"# best {what} of sweep {sweep.name}\n" + dump_config(cfg)
        )
        table += f"\nbest: {what} -> {sweep_dir / 'best.yaml'}\n"
        entries, key = (groups, "mean") if groups is not None else (rows, "score")
        tied = ties(best, entries, key)
        if tied:
            table += (
                f"note: {tied} other {'setting' if groups is not None else 'trial'}(s) tie with it "
                "(the first listed is kept); a wider score_window, another metric (eval/macro_f1, "
                "eval/loss) or more rounds may tell them apart\n"
            )
        for key, side in edges.items():
            table += (
                f"note: the best {key}, {best['params'][key]}, is the {side} value of its grid; "
                "the optimum may lie past it: extend the grid\n"
            )
    atomic_write(sweep_dir / "results.md", table)
    print(table, flush=True)
    return table


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(sweep: SweepConfig, rows: list[dict]) -> str:
    names = axes(sweep)
    windowed = sweep.score_window > 1  # a score column only when it is not the final value
    head = ["trial", *names, "status", f"final {sweep.metric}",
            *([f"mean of last {sweep.score_window}"] if windowed else []), "best", "MB total",
            "client GFLOPs/round", "virtual s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mb = r["bytes_total"] / 1e6 if r["bytes_total"] is not None else None
        gf = r["client_flops"] / 1e9 if r["client_flops"] is not None else None
        status = r["status"] + (f" ({r['error']})" if r["error"] else "")
        cells = [r["trial_id"], *(r["params"].get(a) for a in names), status, r["final"],
                 *([r["score"]] if windowed else []), r["best"], mb, gf, r["virtual_s"]]  # fmt: skip
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def settings_markdown(sweep: SweepConfig, groups: list[dict]) -> str:
    """One line per setting: its score as mean +- std over the seeds that finished."""
    keys = list(sweep.space)
    name = score_name(sweep.metric, sweep.score_window)
    head = [*keys, "seeds", f"{name}: mean +- std", "min", "max", "missing seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        spread = "-" if g["mean"] is None else f"{g['mean']:.4g} +- {g['std']:.2g}"
        missing = ", ".join(map(str, g["missing"])) or "-"
        cells = [*(_fmt(g["params"].get(k)) for k in keys), str(g["n"]), spread,
                 _fmt(g["min"]), _fmt(g["max"]), missing]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
