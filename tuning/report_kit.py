"""What the `fedray report` renderers share: input reading and checks, pure helpers, atomic index.md
writing."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

KEY = "RUN_DIR"  # the CLI argument every user error names
REPORT = "report"
MB = 1e6  # decimal megabytes, as the captions say
PHASE_KEYS = ("virtual_download_s", "virtual_compute_s", "virtual_upload_s", "virtual_latency_s")

# (png name or None, heading, caption or the reason nothing was drawn)
Section = tuple[str | None, str, str]

# ---- pure helpers ----------------------------------------------------------------------------


def pareto_front(points: list[tuple[float, float]], maximize_y: bool = True) -> list[int]:
    """Indices of the points no other point dominates (x a cost to minimise, y the metric), by x.

    A point is dominated when another is at least as good on both and strictly better on one, so
    exact duplicates are all kept; points with a non-finite coordinate are left out.
    """
    sign = 1.0 if maximize_y else -1.0
    pts = {i: (float(x), sign * float(y)) for i, (x, y) in enumerate(points) if finite(x, y)}

    def dominated(i: int) -> bool:
        xi, yi = pts[i]
        return any(
            xj <= xi and yj >= yi and (xj < xi or yj > yi) for j, (xj, yj) in pts.items() if j != i
        )

    return sorted((i for i in pts if not dominated(i)), key=lambda i: (pts[i][0], -pts[i][1], i))


def grid(
    rows: Iterable[Mapping[str, Any]], x_key: str, y_key: str, value_key: str, mode: str = "max"
) -> tuple[list[Any], list[Any], list[list[float]]]:
    """(xs, ys, matrix) with matrix[i][j] the value at (ys[i], xs[j]), NaN where there is none.

    Keys are looked up in the row, then in its "params". Every row with both coordinates adds its
    x and y (so a failed trial still gets a cell); several values in one cell keep the `mode` best.
    """
    cells: dict[tuple[Any, Any], float] = {}
    xs: dict[Any, None] = {}
    ys: dict[Any, None] = {}
    for row in rows:
        x, y = lookup(row, x_key), lookup(row, y_key)
        if x is None or y is None:
            continue
        x, y = hashable(x), hashable(y)
        xs[x] = ys[y] = None
        v = lookup(row, value_key)
        if not finite(v):
            continue
        old = cells.get((x, y))
        if old is None or (v > old if mode == "max" else v < old):
            cells[(x, y)] = float(v)
    sx, sy = sorted(xs, key=order), sorted(ys, key=order)
    return sx, sy, [[cells.get((x, y), math.nan) for x in sx] for y in sy]


def straggler_timeline(
    clients_rows: Iterable[Mapping[str, Any]], round: int
) -> list[tuple[Any, float, float, float, float]]:
    """(client, download_s, compute_s, upload_s, latency_s) of one round by client; rows missing a
    phase (a failed client) are skipped."""
    out = []
    for row in clients_rows:
        phases = [row.get(k) for k in PHASE_KEYS]
        if row.get("round") == round and "client" in row and finite(*phases):
            out.append((row["client"], *(float(p) for p in phases)))
    return sorted(out, key=lambda t: order(t[0]))


def finite(*values: Any) -> bool:
    """Every value a real, finite number (bools and None are not)."""
    return all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def lookup(row: Mapping[str, Any], key: str) -> Any:
    """row[key], else row["params"][key], else None."""
    if key in row:
        return row[key]
    params = row.get("params")
    return params.get(key) if isinstance(params, Mapping) else None


def hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def order(v: Any) -> tuple[int, float, str]:
    """Sort key: numbers by value first, then everything else by its text."""
    return (0, float(v), "") if finite(v) else (1, 0.0, str(v))


def num(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}g}" if finite(v) else "—" if v is None else str(v)


# ---- reading and checking inputs -------------------------------------------------------------


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(KEY, f"{path} is not readable JSON ({e})") from None


def read_optional_dict(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(KEY, f"{path} should hold a JSON object")
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records with an integer "round"; a cut last line (a kill mid-write) is dropped, as on resume."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(KEY, f"{path} is not readable ({e})") from None
    out = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise ConfigError(KEY, f"{path} line {n} is not JSON") from None
        if not isinstance(row, dict) or not finite(row.get("round")):
            raise ConfigError(KEY, f"{path} line {n} is not a JSON object with a numeric 'round'")
        out.append(row)
    return out


def check_partition(path: Path) -> dict[str, Any] | None:
    data = read_optional_dict(path)
    entries = data.get("clients") if data is not None else []
    ok = isinstance(entries, list) and all(
        isinstance(e, dict) and "client" in e and finite(e.get("size")) for e in entries
    )
    if not ok:
        raise ConfigError(KEY, f"{path} should list 'clients' with a 'client' id and a 'size'")
    return data


def check_results(path: Path, data: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    def bad(what: str) -> ConfigError:
        return ConfigError(KEY, f"{path}: {what}")

    if not (isinstance(data, dict) and isinstance(data.get("sweep"), dict)):
        raise bad('should be an object {"sweep": {...}, "rows": [...]}')
    sweep, rows = data["sweep"], data.get("rows")
    if not isinstance(sweep.get("metric"), str) or sweep.get("mode") not in ("max", "min"):
        raise bad('"sweep" needs "metric" (a metric name) and "mode" ("max" or "min")')
    axes = sweep.get("axes") or []
    if not (isinstance(axes, list) and all(isinstance(a, str) for a in axes)):
        raise bad('"sweep.axes" should be a list of parameter names')
    window = sweep.get("score_window", 1)  # absent in a results.json written before windows
    if not (isinstance(window, int) and not isinstance(window, bool) and window >= 1):
        raise bad('"sweep.score_window" should be an integer >= 1')
    if not isinstance(rows, list) or not rows:
        raise bad('"rows" is missing or empty: the sweep recorded no trials')
    out = []
    for n, row in enumerate(rows):
        if not (isinstance(row, dict) and isinstance(row.get("params") or {}, dict)):
            raise bad(f"row {n} should be an object whose 'params' is an object")
        out.append(
            {**row, "trial_id": str(row.get("trial_id", n)), "params": row.get("params") or {}}
        )
    name = str(sweep.get("name") or path.parent.name)
    meta = {"name": name, "metric": sweep["metric"], "mode": sweep["mode"], "axes": axes,
            "score_window": window}  # fmt: skip
    return meta, out


# ---- writing ---------------------------------------------------------------------------------


def write_report(base: Path, build: Callable[[Path], str]) -> Path:
    """Build the figures and index.md in a temp dir, then swap it in for <base>/report whole."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".report-tmp-", dir=base))
    except OSError as e:
        raise ConfigError(KEY, f"cannot write {base / REPORT} ({e})") from None
    tmp.chmod(0o755)  # mkdtemp makes it private; the report is meant to be shared
    final, old = base / REPORT, base / f".report-old-{os.getpid()}"
    try:
        (tmp / "index.md").write_text(build(tmp))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            old.rename(final)  # the swap itself failed: put the previous report back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final / "index.md"


def markdown(title: str, intro: str, sections: Sequence[Section], tail: str = "") -> str:
    """index.md: a title, an intro paragraph, one heading per figure (or why it is missing)."""
    parts = [f"# {title}", "", intro, ""]
    for png, heading, caption in sections:
        parts += [f"## {heading}", ""]
        parts += (
            [f"![{heading}]({png})", "", caption, ""] if png else [f"_Not drawn: {caption}_", ""]
        )
    return "\n".join(parts) + ("\n" + tail if tail else "")
