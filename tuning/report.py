"""`fedray report RUN_DIR|SWEEP_DIR`: a run's or a sweep's report/{*.png,index.md}. The renderers are
tuning/report_run.py and tuning/report_sweep.py, their shared helpers tuning/report_kit.py."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ConfigError
from tuning.report_kit import KEY, grid, pareto_front, straggler_timeline
from tuning.report_run import report_run
from tuning.report_sweep import report_sweep

__all__ = ["grid", "pareto_front", "report", "report_run", "report_sweep", "straggler_timeline"]


def report(path: Path) -> Path:
    """Report on a run directory (holds metrics.jsonl) or a sweep directory (holds results.json)."""
    path = Path(path)
    if (path / "metrics.jsonl").is_file():
        return report_run(path)
    if (path / "results.json").is_file():
        return report_sweep(path)
    raise ConfigError(KEY, f"{path} holds neither metrics.jsonl (a run) nor results.json (a sweep)")
