"""The sweep report of `fedray report`: its figures, captions, trials table and trial run reports."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from tuning import plots
from tuning.report_kit import (
    KEY,
    MB,
    REPORT,
    Section,
    check_results,
    finite,
    grid,
    hashable,
    lookup,
    markdown,
    num,
    pareto_front,
    read_json,
    write_report,
)
from tuning.report_run import report_run
from tuning.score import row_score, score_name


def sweep_markdown(
    out: Path,
    sweep_dir: Path,
    sweep: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    trials: Mapping[str, str | None],
    settings: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Draw the sweep's figures into `out` and return its index.md (inputs already checked);
    `trials` is render_trial_reports' answer; `settings`: results.json's per-setting spread over
    seeds, when the sweep had a seeds list."""
    axes = _sweep_axes(sweep["axes"], rows)
    sections = [
        *([_seeds_section(out, sweep, settings)] if settings else []),
        _final_section(out, sweep, axes, rows),
        _pareto_section(out, sweep, axes, rows, "bytes_total", MB, "total communicated (MB)"),
        _pareto_section(
            out, sweep, axes, rows, "client_flops", 1e9, "client compute per round (GFLOPs)"
        ),
    ]
    ok, best = [r for r in rows if _usable(r)], _best_row(rows, sweep["mode"])
    by = "higher" if sweep["mode"] == "max" else "lower"
    intro = (
        f"Sweep `{sweep['name']}` in `{sweep_dir}`: {len(rows)} trial(s), {len(ok)} finished "
        f"with a result. Trials ranked by {_score_name(sweep)} ({by} is better) over "
        f"{', '.join(f'`{a}`' for a in axes) or 'no varying parameter'}."
    )
    if best:
        params = f" ({_label(best, axes)})" if axes else ""
        intro += f" Best trial: **{best['trial_id']}**{params}, {row_score(best):.4g}."
    top = _best_setting(settings or [], sweep["mode"])
    if top is not None:
        intro += (f" Best setting over seeds: **{_setting_label(top)}**, {top['mean']:.4g} +- "
                  f"{top['std']:.2g} (mean +- std of {top['n']}).")  # fmt: skip
    tail = _trials_table(
        rows, axes, sweep["mode"], sweep["score_window"], sweep_dir
    ) + _trial_reports_note(trials)
    return markdown(f"Sweep report: {sweep['name']}", intro, sections, tail)


def render_trial_reports(
    rows: Sequence[Mapping[str, Any]], sweep_dir: Path
) -> dict[str, str | None]:
    """Render the run report of every trial whose run_dir holds a metrics.jsonl.

    Returns trial id -> None when rendered, else why not: one trial's broken run directory (or a
    figure that fails to draw) must not cost the whole sweep its report.
    """
    out: dict[str, str | None] = {}
    for r in rows:
        path = _trial_dir(r.get("run_dir"), sweep_dir)
        if path is None or not (path / "metrics.jsonl").is_file():
            continue
        try:
            report_run(path)
            out[r["trial_id"]] = None
        except Exception as e:  # any failure is noted in the index instead
            text = e.message if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
            out[r["trial_id"]] = (text.strip().splitlines() or [""])[0][:200]
    return out


def _trial_reports_note(trials: Mapping[str, str | None]) -> str:
    if not trials:
        return ""
    done = sum(v is None for v in trials.values())
    lines = [
        "",
        "## Trial run reports",
        "",
        f"{done} of {len(trials)} trial run directories holding a metrics.jsonl got their own "
        "run report, linked from the run column above.",
    ]
    failed = [(tid, why) for tid, why in trials.items() if why is not None]
    if failed:
        lines += ["", "Not rendered (a previous report there, if any, is left as it was):", ""]
        lines += [f"- **{tid}**: {why}" for tid, why in failed]
    return "\n".join(lines) + "\n"


def _trial_dir(run_dir: Any, sweep_dir: Path) -> Path | None:
    """A trial's run directory, relative paths taken from the sweep directory; None if unset."""
    if not run_dir:
        return None
    path = Path(str(run_dir))
    return path if path.is_absolute() else sweep_dir / path


def _usable(row: Mapping[str, Any]) -> bool:
    return finite(row_score(row)) and row.get("status") != "ERROR"


def _score_name(sweep: Mapping[str, Any]) -> str:
    return score_name(sweep["metric"], sweep["score_window"])


def _sweep_axes(axes: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The declared axes the rows carry, else every parameter whose value varies across trials."""
    present = [a for a in axes if any(a in r["params"] for r in rows)]
    if present:
        return present
    keys = sorted({k for r in rows for k in r["params"]})
    return [k for k in keys if len({hashable(r["params"].get(k)) for r in rows}) > 1]


def _value(v: Any) -> str:
    if finite(v) and not float(v).is_integer():
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _label(row: Mapping[str, Any], axes: Sequence[str]) -> str:
    params = row["params"]
    parts = [f"{k.rsplit('.', 1)[-1]}={_value(params.get(k))}" for k in axes]
    return ", ".join(parts) or str(row["trial_id"])


def _setting_label(setting: Mapping[str, Any]) -> str:
    parts = [f"{k.rsplit('.', 1)[-1]}={_value(v)}" for k, v in setting["params"].items()]
    return ", ".join(parts) or "base"


def _best_setting(settings: Sequence[Mapping[str, Any]], mode: str) -> Mapping[str, Any] | None:
    ok = [g for g in settings if finite(g.get("mean"))]
    return (max if mode == "max" else min)(ok, key=lambda g: g["mean"]) if ok else None


def _seeds_section(
    out: Path, sweep: Mapping[str, Any], settings: Sequence[Mapping[str, Any]]
) -> Section:
    what, heading, png = _score_name(sweep), "Score over seeds", "final_over_seeds.png"
    names = [_setting_label(g) for g in settings]
    spread = [(g["mean"], g["std"]) if finite(g.get("mean")) else None for g in settings]
    top = _best_setting(settings, sweep["mode"])
    best = next((k for k, g in enumerate(settings) if g is top), None)
    plots.seed_spread(
        out / png,
        names,
        [g.get("scores", g["finals"]) for g in settings],
        spread,
        ("setting", what),
        f"{sweep['name']}: {what} over seeds",
        best,
    )
    cap = (
        f"Each setting's {what} for every seed whose run finished (dots), with their mean and "
        "+- one sample standard deviation (error bar); a setting's seeds share every other parameter."
    )
    lacking = [
        f"{n} ({', '.join(map(str, g['missing']))})"
        for n, g in zip(names, settings, strict=True)
        if g["missing"]
    ]
    if lacking:
        cap += " Seeds missing (failed or stopped early): " + "; ".join(lacking) + "."
    if top is not None:
        cap += f" Best mean (red): {_setting_label(top)}, {top['mean']:.4g} +- {top['std']:.2g}."
    return (png, heading, cap)


def _final_section(
    out: Path, sweep: Mapping[str, Any], axes: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> Section:
    what, mode = _score_name(sweep), sweep["mode"]
    name = what[0].upper() + what[1:]
    heading, png = f"{name} over the swept parameters", "final_by_axes.png"
    flat = [
        {
            **r["params"],
            "trial": r["trial_id"],
            "score": row_score(r) if _usable(r) else None,
            "_": 0,
        }
        for r in rows
    ]
    title = f"{sweep['name']}: {what} ({'max' if mode == 'max' else 'min'}imise)"
    if len(axes) < 2:
        axis = axes[0] if axes else "trial"
        xs, _, matrix = grid(flat, axis, "_", "score", mode)  # a one-row grid: best per value
        ok = [(x, v) for x, v in zip(xs, matrix[0], strict=True) if not math.isnan(v)]
        failed = [x for x, v in zip(xs, matrix[0], strict=True) if math.isnan(v)]
        plots.sweep_line(
            out / png,
            [x for x, _ in ok],
            [v for _, v in ok],
            failed,
            (axis, what),
            title,
        )
        cap = f"{name} against {axis}, the best trial kept per value ({mode}imise)."
        if failed:
            cap += (
                " Red crosses on the axis: every trial failed at "
                + ", ".join(map(_value, failed))
                + "."
            )
        if ok:
            x, v = (max if mode == "max" else min)(ok, key=lambda p: p[1])
            cap += f" Best: {v:.4g} at {axis}={_value(x)}."
        return (png, heading, cap)
    xs, ys, matrix = grid(flat, axes[0], axes[1], "score", mode)
    ran = {(hashable(lookup(r, axes[0])), hashable(lookup(r, axes[1]))) for r in flat}
    notes = {
        (i, j): "failed" if (x, y) in ran else "missing"
        for i, y in enumerate(ys)
        for j, x in enumerate(xs)
        if math.isnan(matrix[i][j])
    }
    cells = [
        (v, i, j) for i, line in enumerate(matrix) for j, v in enumerate(line) if not math.isnan(v)
    ]
    best = (max if mode == "max" else min)(cells) if cells else None
    better = "higher" if mode == "max" else "lower"
    plots.heatmap(
        out / png,
        xs,
        ys,
        matrix,
        notes,
        (axes[0], axes[1], f"{what} ({better} is better)"),
        title,
        best[1:] if best else None,
        mode == "max",
    )
    cap = f"{name} of each trial, {axes[0]} across and {axes[1]} up"
    if len(axes) > 2:
        cap += f"; each cell keeps the best over {', '.join(axes[2:])}"
    cap += (
        ". Grey cells hold no result: 'failed' where every trial there failed, 'missing' where no "
        "trial ran that combination."
    )
    if best:
        v, i, j = best
        cap += f" Best (red box, {mode}imise): {v:.4g} at {axes[0]}={_value(xs[j])}, {axes[1]}={_value(ys[i])}."
    return (png, heading, cap)


def _pareto_section(
    out: Path,
    sweep: Mapping[str, Any],
    axes: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    key: str,
    scale: float,
    xlabel: str,
) -> Section:
    cost = "communication" if key == "bytes_total" else "client compute"
    heading, png = f"Pareto front: metric vs {cost}", f"pareto_{key}.png"
    ok = [r for r in rows if _usable(r) and finite(r.get(key))]
    if not ok:
        return (None, heading, f"no trial both finished and reported {key}.")
    metric, better = sweep["metric"], "higher" if sweep["mode"] == "max" else "lower"
    what = _score_name(sweep)
    points = [(float(r[key]) / scale, float(row_score(r))) for r in ok]
    labels = [_label(r, axes) for r in ok]
    front = pareto_front(points, sweep["mode"] == "max")
    plots.pareto(
        out / png,
        points,
        labels,
        front,
        (xlabel, what),
        f"{sweep['name']}: {metric} vs {cost}",
    )
    listed = "; ".join(f"{labels[i]} ({points[i][0]:.3g}, {points[i][1]:.4g})" for i in front)
    cap = (
        f"Every finished trial ({len(ok)} of {len(rows)}) as its {what} ({better} is "
        f"better) against {xlabel}. Red points form the Pareto front, trials no other trial beats "
        f"on both; the step line is the best {metric} reachable within each budget. Front, "
        f"cheapest first: {listed}."
    )
    return (png, heading, cap)


def _trials_table(
    rows: Sequence[Mapping[str, Any]],
    axes: Sequence[str],
    mode: str,
    window: int,
    sweep_dir: Path,
) -> str:
    keys = [*axes, *sorted({k for r in rows for k in r["params"]} - set(axes))]
    scored = window > 1  # a score column only when it is not the final value
    head = ["trial", *keys, "status", "final", *([f"mean of last {window}"] if scored else []),
            "best", "MB", "client GFLOPs/round", "virtual s"]  # fmt: skip
    lines = ["## Trials", "", "| " + " | ".join([*head, "run", "error"]) + " |"]
    lines.append("|" + "---|" * (len(head) + 2))
    best = _best_row(rows, mode)
    for r in rows:
        tid = f"**{r['trial_id']}**" if r is best else r["trial_id"]
        cells = [tid, *(_value(r["params"].get(k)) for k in keys)]
        cells += [str(r.get("status") or "—"), num(r.get("final"))]
        cells += [*([num(row_score(r))] if scored else []), num(r.get("best"))]
        for k, scale in (("bytes_total", MB), ("client_flops", 1e9), ("virtual_s", 1.0)):
            cells.append(num(r[k] / scale) if finite(r.get(k)) else "—")
        # A traceback's last line is the exception; that is what fits in a table cell.
        error = [ln.strip() for ln in str(r.get("error") or "").splitlines() if ln.strip()]
        cells += [_run_link(r.get("run_dir"), sweep_dir), error[-1][:100] if error else ""]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _best_row(rows: Sequence[Mapping[str, Any]], mode: str) -> Mapping[str, Any] | None:
    ok = [r for r in rows if _usable(r)]
    return (max if mode == "max" else min)(ok, key=row_score) if ok else None


def _run_link(run_dir: Any, sweep_dir: Path) -> str:
    """A link from report/index.md to the trial's own report if it has one, else to its folder."""
    path = _trial_dir(run_dir, sweep_dir)
    if path is None:
        return "—"
    if not path.is_dir():
        return f"`{run_dir}`"  # gone or on another machine: name it, no dead link
    target = path / REPORT / "index.md" if (path / REPORT / "index.md").is_file() else path
    rel = os.path.relpath(target, sweep_dir / REPORT)
    return f"[{path.name}](<{rel}>)" if any(c in rel for c in " ()") else f"[{path.name}]({rel})"


def report_sweep(sweep_dir: Path) -> Path:
    """Write <sweep_dir>/report/{*.png,index.md} for a `fedray tune` sweep, after rendering each
    trial's own run report; return the index path."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "results.json"
    if not path.is_file():
        raise ConfigError(KEY, f"{sweep_dir} holds no results.json (not a fedray sweep directory)")
    data = read_json(path)
    sweep, rows = check_results(path, data)
    settings = check_settings(path, data)
    trials = render_trial_reports(rows, sweep_dir)  # before the table, so it links them
    return write_report(
        sweep_dir, lambda out: sweep_markdown(out, sweep_dir, sweep, rows, trials, settings)
    )


def check_settings(path: Path, data: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """results.json's "settings" (a sweep with seeds), each with params, finals, mean, std, n and
    missing; None when absent."""
    settings = data.get("settings")
    if settings is None:
        return None
    shape = {"params": dict, "finals": list, "missing": list}
    if not isinstance(settings, list) or not all(
        isinstance(g, dict) and all(isinstance(g.get(k), t) for k, t in shape.items())
        and all(finite(v) for v in g["finals"])
        and (isinstance(g.get("scores", []), list) and all(finite(v) for v in g.get("scores", [])))
        and (not g["finals"] or (finite(g.get("mean")) and finite(g.get("std")) and isinstance(g.get("n"), int)))
        for g in settings
    ):  # fmt: skip
        raise ConfigError(
            KEY,
            f'{path}: "settings" should list objects with params, finals, missing (and mean, std, n with finals)',
        )
    return settings
