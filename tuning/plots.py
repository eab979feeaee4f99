"""The matplotlib figures of `fedray report`: each function draws one PNG from plain lists."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Segment colours of the virtual-time timeline, in drawing order.
PHASES = (
    ("download", "tab:blue"),
    ("compute", "tab:orange"),
    ("upload", "tab:green"),
    ("latency", "tab:gray"),
)
_MAX_TICK_LABELS = 30  # beyond this many clients or cells, let matplotlib thin the tick labels


def _figure(width: float, height: float) -> Any:
    """A pyplot-free Figure on the Agg canvas: headless, and no global pyplot state to leak."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=110)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def metric_curves(
    path: Path,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    labels: tuple[str, str],
    title: str,
    log_y: bool,
    xlim: tuple[float, float] | None = None,
    integer_x: bool = False,
) -> None:
    """One line per named series (x, y), the first drawn thicker; xlim spans the whole run."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    for i, (label, (xs, ys)) in enumerate(series.items()):
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=2.2 if i == 0 else 1.3, label=label)
    if log_y:
        _plain_log_axis(ax, [y for _, ys in series.values() for y in ys])
    if xlim is not None:  # the whole run, even when only its last round evaluated
        pad = 0.3 if integer_x else 0.03 * (xlim[1] - xlim[0])
        ax.set_xlim(xlim[0] - pad, xlim[1] + pad)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, path)


def _plain_log_axis(ax: Any, ys: Sequence[float]) -> None:
    """Log y with plain numbers ("300", not "3x10^2"); minor ticks labelled over a narrow range."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    narrow = min(ys) > 0 and max(ys) / min(ys) < 20
    ax.yaxis.set_minor_formatter(plain if narrow else NullFormatter())


def client_bytes(
    path: Path, clients: Sequence[int], up_mb: Sequence[float], down_mb: Sequence[float], title: str
) -> None:
    """Stacked bars per client: MB uploaded and downloaded, summed over every round."""
    fig = _figure(max(6.0, min(14.0, 0.35 * len(clients) + 3)), 4.0)
    ax = fig.add_subplot()
    pos = list(range(len(clients)))
    ax.bar(pos, up_mb, color="tab:green", label="upload (MB)")
    ax.bar(pos, down_mb, bottom=up_mb, color="tab:blue", label="download (MB)")
    if len(clients) <= _MAX_TICK_LABELS:
        ax.set_xticks(pos, [str(c) for c in clients])
    ax.set_xlabel("client")
    ax.set_ylabel("communicated over all rounds (MB)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, path)


def timelines(
    path: Path,
    panels: Sequence[tuple[int, Sequence[tuple[int, float, float, float, float]]]],
    title: str,
) -> None:
    """Small multiples, one per round: horizontal stacked phase bars per client, straggler marked."""
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    height = max(len(rows) for _, rows in panels) * 0.32 + 1.3
    fig = _figure(4.2 * ncols, height * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    for ax, (rnd, rows) in zip(axes, panels, strict=False):
        _timeline_panel(ax, rnd, rows)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles = [_patch(color, name) for name, color in PHASES]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(PHASES), fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def _patch(color: str, label: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


def _timeline_panel(
    ax: Any, rnd: int, rows: Sequence[tuple[int, float, float, float, float]]
) -> None:
    totals = [sum(r[1:]) for r in rows]
    straggler = max(range(len(rows)), key=totals.__getitem__)
    for y, row in enumerate(rows):
        left = 0.0
        edge = "black" if y == straggler else "none"
        for (_, color), width in zip(PHASES, row[1:], strict=True):
            ax.barh(y, width, left=left, color=color, edgecolor=edge, linewidth=1.2)
            left += width
    ax.annotate(
        f"straggler {totals[straggler]:.3g} s",
        (totals[straggler], straggler),
        xytext=(3, 0),
        textcoords="offset points",
        va="center",
        fontsize=7,
        fontweight="bold",
    )
    labels = [f"client {r[0]}" + (" *" if y == straggler else "") for y, r in enumerate(rows)]
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()  # lowest client id on top, reading down
    ax.get_yticklabels()[straggler].set_fontweight("bold")
    ax.set_xlim(0, max(totals) * 1.3 if max(totals) > 0 else 1.0)
    ax.set_xlabel("virtual time in round (s)")
    ax.set_title(f"round {rnd}", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)


def partition(
    path: Path,
    clients: Sequence[int],
    histograms: Sequence[Sequence[float]] | None,
    label_names: Sequence[str] | None,
    sizes: Sequence[float],
    title: str,
) -> None:
    """Per-client label histograms as stacked bars, or plain client sizes when there are no labels."""
    import matplotlib

    fig = _figure(max(6.0, min(14.0, 0.35 * len(clients) + 3)), 4.0)
    ax = fig.add_subplot()
    pos = list(range(len(clients)))
    if histograms:
        n_labels = len(histograms[0])
        cmap = matplotlib.colormaps["tab20" if n_labels > 10 else "tab10"]
        bottom = [0.0] * len(clients)
        for k in range(n_labels):
            heights = [h[k] for h in histograms]
            name = label_names[k] if label_names and k < len(label_names) else f"label {k}"
            ax.bar(pos, heights, bottom=bottom, color=cmap(k % cmap.N), label=name)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ncols = max(1, n_labels // 12 + 1)
        ax.legend(
            fontsize=7, ncols=ncols, title="label", loc="upper left", bbox_to_anchor=(1.01, 1)
        )
    else:
        ax.bar(pos, sizes, color="tab:blue")
    if len(clients) <= _MAX_TICK_LABELS:
        ax.set_xticks(pos, [str(c) for c in clients])
    ax.set_xlabel("client")
    ax.set_ylabel("training examples")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    _save(fig, path)


def heatmap(
    path: Path,
    xs: Sequence[Any],
    ys: Sequence[Any],
    matrix: Sequence[Sequence[float]],
    notes: dict[tuple[int, int], str],
    labels: tuple[str, str, str],
    title: str,
    best: tuple[int, int] | None,
    higher_is_better: bool = True,
) -> None:
    """Annotated heatmap of matrix[i][j] (ys[i], xs[j]); NaN cells grey with their note as text.

    The colour map flips for a metric to minimise, so bright always means better.
    """
    import matplotlib
    import numpy as np
    from matplotlib.patches import Rectangle

    xlabel, ylabel, metric = labels
    data = np.ma.masked_invalid(np.asarray(matrix, dtype=float))
    name = "viridis" if higher_is_better else "viridis_r"
    cmap = matplotlib.colormaps[name].with_extremes(bad="#d0d0d0")
    fig = _figure(max(5.0, 0.9 * len(xs) + 3), max(3.5, 0.6 * len(ys) + 2))
    ax = fig.add_subplot()
    lo, hi = (float(data.min()), float(data.max())) if data.count() else (0.0, 1.0)
    image = ax.imshow(data, cmap=cmap, aspect="auto", origin="lower", vmin=lo, vmax=hi)
    fig.colorbar(image, ax=ax, label=metric)
    for i in range(len(ys)):
        for j in range(len(xs)):
            v = matrix[i][j]
            if math.isnan(v):
                ax.text(j, i, notes.get((i, j), "missing"), ha="center", va="center", fontsize=8)
                continue
            frac = 0.0 if hi == lo else (v - lo) / (hi - lo)
            dark = (frac < 0.5) == higher_is_better  # viridis is dark at its low end
            color = "white" if dark else "black"
            ax.text(j, i, _fmt(v), ha="center", va="center", fontsize=8, color=color)
    if best is not None:
        i, j = best
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    if len(xs) <= _MAX_TICK_LABELS:
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    if len(ys) <= _MAX_TICK_LABELS:
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _save(fig, path)


def sweep_line(
    path: Path,
    xs: Sequence[Any],
    values: Sequence[float],
    failed: Sequence[Any],
    labels: tuple[str, str],
    title: str,
) -> None:
    """The metric against one swept value; failed trials marked as red crosses on the x axis."""
    xlabel, metric = labels
    numeric = all(isinstance(x, (int, float)) for x in [*xs, *failed])
    order = {x: k for k, x in enumerate(dict.fromkeys([*xs, *failed]))}
    px = list(xs) if numeric else [order[x] for x in xs]
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    ax.plot(px, values, marker="o", linewidth=1.8, label="finished trials")
    if failed:
        fx = list(failed) if numeric else [order[x] for x in failed]
        # y in axes coordinates: the crosses sit on the x axis whatever the metric's range.
        ax.plot(
            fx,
            [0.0] * len(fx),
            "x",
            color="red",
            markersize=9,
            mew=2,
            label="failed",
            transform=ax.get_xaxis_transform(),
            clip_on=False,
        )
    if not numeric:
        ax.set_xticks(list(order.values()), [str(x) for x in order], rotation=30, ha="right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def pareto(
    path: Path,
    points: Sequence[tuple[float, float]],
    point_labels: Sequence[str],
    front: Sequence[int],
    labels: tuple[str, str],
    title: str,
) -> None:
    """Every trial as a point, the non-dominated ones highlighted and joined by a step line."""
    xlabel, metric = labels
    fig = _figure(7.0, 4.6)
    ax = fig.add_subplot()
    xs = [p[0] for p in points]
    ax.scatter(xs, [p[1] for p in points], color="tab:blue", alpha=0.6, label="trial")
    fx, fy = [points[i][0] for i in front], [points[i][1] for i in front]
    # The attainable region's border: each front point holds until the next, cheaper-to-better one.
    ax.step([*fx, max(xs)], [*fy, fy[-1]], where="post", color="tab:red", linewidth=1.5)
    ax.scatter(fx, fy, color="tab:red", s=50, zorder=3, label="Pareto front")
    on_front = set(front)
    rank = {k: r for r, k in enumerate(sorted(range(len(points)), key=lambda k: xs[k]))}
    for k, (p, text) in enumerate(zip(points, point_labels, strict=True)):
        if len(points) > 15 and k not in on_front:  # labelling every point of a big sweep is noise
            continue
        right_half = rank[k] >= len(points) / 2  # labels point inwards so they stay on the figure
        note = ax.annotate(
            text,
            p,
            xytext=(-4 if right_half else 4, 4),
            textcoords="offset points",
            fontsize=7,
            ha="right" if right_half else "left",
        )
        note.set_in_layout(False)  # long labels must not shrink the axes
    if min(xs) > 0 and max(xs) / min(xs) > 100:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, path)


def seed_spread(
    path: Path,
    names: Sequence[str],
    finals: Sequence[Sequence[float]],
    spread: Sequence[tuple[float, float] | None],
    labels: tuple[str, str],
    title: str,
    best: int | None,
) -> None:
    """Each setting's final metric over its seeds: every seed a dot, the mean with +- one sample
    standard deviation (`spread`, None where no seed finished) as an error bar; the best in red."""
    xlabel, metric = labels
    fig = _figure(max(5.0, 0.9 * len(names) + 2.5), 4.2)
    ax = fig.add_subplot()
    for k, (values, ms) in enumerate(zip(finals, spread, strict=True)):
        if ms is None:
            continue
        drawn = not ax.lines  # the first setting drawn labels the legend
        ax.errorbar([k], [ms[0]], yerr=[ms[1]], fmt="s", capsize=6, markersize=7,
                    color="tab:red" if k == best else "tab:blue",
                    label="mean +- std" if drawn else None)  # fmt: skip
        offsets = (
            [0.0]
            if len(values) == 1
            else [0.24 * j / (len(values) - 1) - 0.12 for j in range(len(values))]
        )
        ax.scatter([k + o for o in offsets], values, color="black", s=12, alpha=0.6, zorder=3,
                   label="one seed" if drawn else None)  # fmt: skip
    tilt = len(names) > 4
    ax.set_xticks(range(len(names)), list(names), rotation=30 if tilt else 0,
                  ha="right" if tilt else "center", fontsize=6 if len(names) > _MAX_TICK_LABELS else None)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3, axis="y")
    if ax.lines:
        ax.legend(fontsize=8)
    _save(fig, path)
