"""The run directory contract: config.yaml, metrics.jsonl, summary.json, partition.json, checkpoints/."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.checkpoint import atomic_write
from engine.errors import ConfigError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PARTITION = "partition.json"
CHECKPOINTS = "checkpoints"
CONTROLS = "controls"  # SCAFFOLD: each client's control variates, one file per version


def new_run_dir(
    out: str | None, name: str, root: str = "runs", resume: str = "fedray resume"
) -> Path:
    """--out DIR if given (must be empty or absent), else <root>/<name>-<N> with the next free N.

    `resume` names the command that continues an existing directory (in the error).
    """
    if out:
        path = Path(out)
        if path.exists() and any(path.iterdir()):
            raise ConfigError("--out", f"{path} is not empty; pick a new folder or use {resume}")
        return path
    base = Path(root)
    n = 1
    while (base / f"{name}-{n}").exists():
        n += 1
    return base / f"{name}-{n}"


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=False, default=float) + "\n")


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with (run_dir / METRICS).open("a") as f:
        f.write(json.dumps(record, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill mid-write: everything after it is dropped on resume
    return out


def truncate_metrics(run_dir: Path, last_round: int) -> list[dict[str, Any]]:
    """Keep the records up to `last_round` (those the checkpoint covers) and rewrite the file."""
    kept = [r for r in read_metrics(run_dir) if r.get("round", 0) <= last_round]
    atomic_write(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in kept))
    return kept
