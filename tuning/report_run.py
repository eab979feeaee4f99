"""The run report of `fedray report`: which figures a run directory gets, and their captions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from tuning import plots
from tuning.report_kit import (
    KEY,
    MB,
    Section,
    check_partition,
    finite,
    markdown,
    num,
    order,
    read_jsonl,
    read_optional_dict,
    straggler_timeline,
    write_report,
)

TIMELINE_ROUNDS = 6  # the timeline figure shows at most this many (the last) rounds
_PHASE_NAMES = ("download", "compute", "upload", "latency")
_SERIES_LABELS = {
    "eval/accuracy": "accuracy",
    "eval/macro_f1": "macro F1",
    "eval/proxy_perplexity": "proxy-tuned large LM",
    "eval/large_perplexity": "large LM alone",
    "eval/small_base_perplexity": "small LM before tuning",
    "train/loss": "training loss",
}


def _eval_keys(metrics: Sequence[Mapping[str, Any]]) -> tuple[list[str], bool, bool]:
    """(keys to draw, headline first; log axis; higher is better)."""
    keys = {k for r in metrics for k in r if finite(r[k])}
    if "eval/perplexity" in keys:  # a causal LM: FedPT adds eval/proxy_perplexity, eval/large_...
        extra = sorted(k for k in keys if k.startswith("eval/") and k.endswith("_perplexity"))
        return ["eval/perplexity", *extra], True, False
    if "eval/accuracy" in keys:
        return (
            ["eval/accuracy", *(["eval/macro_f1"] if "eval/macro_f1" in keys else [])],
            False,
            True,
        )
    return (["train/loss"] if "train/loss" in keys else []), False, False


def _series_name(key: str, fedpt: bool) -> str:
    if key == "eval/perplexity":
        return "small LM (tuned)" if fedpt else "perplexity"
    if key.startswith("eval/proxy@"):
        return f"proxy-tuned, alpha={key.removeprefix('eval/proxy@').removesuffix('_perplexity')}"
    return _SERIES_LABELS.get(key, key.removeprefix("eval/"))


def _cumulative_mb(metrics: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    total, out = 0.0, {}
    for r in metrics:
        if finite(r.get("comm/bytes_total_cum")):
            total = float(r["comm/bytes_total_cum"])
        else:
            total += sum(
                float(r[k]) for k in ("comm/bytes_up", "comm/bytes_down") if finite(r.get(k))
            )
        out[int(r["round"])] = total / MB
    return out


def _metric_sections(out: Path, metrics: Sequence[Mapping[str, Any]], title: str) -> list[Section]:
    heads = ("Eval metric vs round", "Eval metric vs communication")
    keys, log_y, higher = _eval_keys(metrics)
    if not keys:
        return [
            (None, h, "metrics.jsonl logs neither an eval metric nor train/loss.") for h in heads
        ]
    fedpt = log_y and len(keys) > 1
    names = {k: _series_name(k, fedpt) for k in keys}
    pts = {k: [(int(r["round"]), float(r[k])) for r in metrics if finite(r.get(k))] for k in keys}
    cum = _cumulative_mb(metrics)
    ylabel = {"eval/perplexity": "perplexity (log scale)", "eval/accuracy": "score (0 to 1)"}
    ylabel_head = ylabel.get(keys[0], "training loss (nats)")
    by_round = {names[k]: ([p[0] for p in v], [p[1] for p in v]) for k, v in pts.items()}
    by_mb = {names[k]: ([cum[p[0]] for p in v], [p[1] for p in v]) for k, v in pts.items()}
    name = names[keys[0]]
    word = "perplexity" if log_y else name
    rounds = (float(metrics[0]["round"]), float(metrics[-1]["round"]))
    plots.metric_curves(
        out / "metric_vs_round.png",
        by_round,
        ("round", ylabel_head),
        f"{title}: {word} by round",
        log_y,
        rounds,
        integer_x=True,
    )
    plots.metric_curves(
        out / "metric_vs_comm.png",
        by_mb,
        ("cumulative communication (MB)", ylabel_head),
        f"{title}: {word} by traffic",
        log_y,
        (0.0, max(cum.values())),
    )
    head = pts[keys[0]]
    final_r, final_v = head[-1]
    best_r, best_v = (max if higher else min)(head, key=lambda p: p[1])
    cap = (
        f"{name[0].upper()}{name[1:]} on the {len(head)} of {len(metrics)} rounds that logged it: "
        f"final {final_v:.4g} at round {final_r}, best {best_v:.4g} at round {best_r} "
        f"({'higher' if higher else 'lower'} is better{'; log axis' if log_y else ''})."
    )
    if fedpt:
        cap += (
            " FedPT lines: the small LM the clients tune, the proxy-tuned large LM (large + "
            "alpha * (tuned small - small base) logits, what FedPT serves), the black-box large "
            "LM alone and the small LM before tuning."
        )
    if keys[0] == "train/loss":
        cap += (
            " No eval metric was logged, so this is the mean training loss of the sampled clients."
        )
    total = cum[int(metrics[-1]["round"])]
    cap2 = (
        f"The same against cumulative traffic (upload + download of all clients; MB = 10^6 bytes). "
        f"The run moved {total:.4g} MB in {len(metrics)} rounds ({total / len(metrics):.4g} MB "
        f"per round); its best {name} came after {cum[best_r]:.4g} MB."
    )
    return [("metric_vs_round.png", heads[0], cap), ("metric_vs_comm.png", heads[1], cap2)]


def _bytes_section(
    out: Path, clients: Sequence[Mapping[str, Any]], partition: Mapping[str, Any] | None, title: str
) -> Section:
    heading = "Traffic per client"
    up: dict[Any, float] = {}
    down: dict[Any, float] = {}
    for row in clients:
        if "client" in row and finite(row.get("bytes_up"), row.get("bytes_down")):
            c = row["client"]
            up[c] = up.get(c, 0.0) + row["bytes_up"] / MB
            down[c] = down.get(c, 0.0) + row["bytes_down"] / MB
    if not up:
        return (None, heading, "clients.jsonl is missing or logs no per-client bytes.")
    known = [e["client"] for e in partition["clients"]] if partition else []
    ids = sorted(set(up) | set(known), key=order)  # never-sampled clients show as empty bars
    plots.client_bytes(
        out / "client_bytes.png",
        ids,
        [up.get(c, 0.0) for c in ids],
        [down.get(c, 0.0) for c in ids],
        f"{title}: traffic per client",
    )
    total = {c: up[c] + down[c] for c in up}
    heavy = max(total, key=total.__getitem__)
    cap = (
        "Each bar is one client's traffic summed over the rounds it was sampled in (upload at the "
        f"bottom, download on top; MB = 10^6 bytes). {len(up)} of {len(ids)} clients took part; "
        f"client {heavy} moved the most, {total[heavy]:.4g} MB, against a mean of "
        f"{sum(total.values()) / len(total):.4g} MB per participating client."
    )
    return ("client_bytes.png", heading, cap)


def _timeline_section(out: Path, clients: Sequence[Mapping[str, Any]], title: str) -> Section:
    heading = "Virtual-time timeline of the last rounds"
    rounds = sorted({r["round"] for r in clients})
    panels = [(r, rows) for r in rounds if (rows := straggler_timeline(clients, r))]
    panels = panels[-TIMELINE_ROUNDS:]
    if not panels:
        return (None, heading, "clients.jsonl is missing or logs no per-client virtual times.")
    plots.timelines(out / "timeline.png", panels, f"{title}: virtual time per client")
    notes = []
    for r, rows in panels:
        s = max(rows, key=lambda t: sum(t[1:]))
        phase = _PHASE_NAMES[max(range(4), key=lambda k: s[k + 1])]
        notes.append(f"round {r}: client {s[0]}, {sum(s[1:]):.3g} s, mostly {phase}")
    cap = (
        f"Virtual (simulated-device) time of every sampled client in the last {len(panels)} "
        "round(s), split into download, compute, upload and network latency, on one time axis. "
        "The straggler, the client with the largest total (outlined and starred), decides when the "
        f"server can aggregate: {'; '.join(notes)}."
    )
    return ("timeline.png", heading, cap)


def _partition_section(out: Path, partition: Mapping[str, Any] | None, title: str) -> Section:
    heading = "Data partition"
    if not partition or not partition["clients"]:
        return (None, heading, "partition.json is missing or lists no clients.")
    entries = partition["clients"]
    ids, sizes = [e["client"] for e in entries], [float(e["size"]) for e in entries]
    names = [str(n) for n in partition.get("label_names") or []]
    hists = [e.get("label_histogram") for e in entries]
    labelled = bool(names) and all(
        isinstance(h, list) and len(h) == len(names) and finite(*h) for h in hists
    )
    plots.partition(
        out / "partition.png",
        ids,
        hists if labelled else None,
        names,
        sizes,
        f"{title}: examples per client",
    )
    spread = (
        f"{len(ids)} clients hold {min(sizes):.0f} to {max(sizes):.0f} examples each "
        f"({sum(sizes):.0f} in all)."
    )
    if not labelled:
        cap = (
            "The data has no class labels (a language-modelling corpus), so the bars show each "
            f"client's number of training examples. {spread}"
        )
        return ("partition.png", heading, cap)
    shares = [
        (max(h) / max(sum(h), 1), e["client"], names[h.index(max(h))])
        for e, h in zip(entries, hists, strict=True)
    ]
    share, who, label = max(shares, key=lambda s: s[0])
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    cap = (
        f"Training examples per client stacked by label ({shown}), as partitioned before round 1. "
        f"{spread} The most skewed client, {who}, has {share:.0%} of its examples labelled "
        f"'{label}'."
    )
    return ("partition.png", heading, cap)


def _run_intro(
    run_dir: Path, metrics: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]
) -> str:
    last = metrics[-1]
    total = summary.get("comm_bytes_total")
    total_mb = total / MB if finite(total) else _cumulative_mb(metrics)[int(last["round"])]
    virtual = summary.get("virtual_s", last.get("time/virtual_s"))
    text = (
        f"Run directory `{run_dir}`: {len(metrics)} rounds logged, {total_mb:.4g} MB communicated"
        f", {num(virtual)} s of virtual (simulated-device) time."
    )
    final = summary.get("metrics")
    if isinstance(final, dict) and final:
        text += " Final metrics: " + ", ".join(f"{k} {num(v)}" for k, v in final.items()) + "."
    if not summary:
        text += " There is no summary.json yet: the run has not finished (or was stopped)."
    return text + f" Regenerate with `fedray report {run_dir}`."


def run_markdown(
    out: Path,
    run_dir: Path,
    metrics: Sequence[Mapping[str, Any]],
    clients: Sequence[Mapping[str, Any]],
    partition: Mapping[str, Any] | None,
    summary: Mapping[str, Any],
) -> str:
    """Draw the run's figures into `out` and return its index.md (inputs already checked)."""
    tags = [str(summary[k]) for k in ("algorithm", "method") if summary.get(k)]
    title = str(summary.get("name") or run_dir.name) + (f" ({', '.join(tags)})" if tags else "")
    sections = [
        *_metric_sections(out, metrics, title),
        _bytes_section(out, clients, partition, title),
        _timeline_section(out, clients, title),
        _partition_section(out, partition, title),
    ]
    intro = _run_intro(run_dir, metrics, summary)
    return markdown(f"Run report: {title}", intro, sections)


def report_run(run_dir: Path) -> Path:
    """Write <run_dir>/report/{*.png,index.md} for one fedray run; return the index path."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(KEY, f"{run_dir} holds no metrics.jsonl (not a fedray run directory)")
    by_round = {int(r["round"]): r for r in read_jsonl(path)}  # a resumed run's rewrite wins
    if not by_round:
        raise ConfigError(KEY, f"{path} holds no rounds")
    metrics = [by_round[k] for k in sorted(by_round)]
    clients_path = run_dir / "clients.jsonl"
    clients = read_jsonl(clients_path) if clients_path.is_file() else []
    partition = check_partition(run_dir / "partition.json")
    summary = read_optional_dict(run_dir / "summary.json") or {}
    return write_report(
        run_dir, lambda out: run_markdown(out, run_dir, metrics, clients, partition, summary)
    )
