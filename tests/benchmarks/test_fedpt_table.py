"""benchmarks/fedpt_table.py's plan of runs, from a config (no run)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from fedpt_table import variants  # noqa: E402

from engine.config import read_yaml  # noqa: E402


def test_a_real_pair_without_emulator_keys_plans_its_runs() -> None:
    base = read_yaml(ROOT / "configs" / "fedpt" / "qwen_pair.yaml")  # no emulator_* keys
    assert [n for n, _ in variants(False, base)] == ["FedPT (config)"]
    names = [n for n, _ in variants(True, base)]
    assert names == ["FedPT (config)", "no per-round distillation", "proxy_from global"]


def test_an_emulator_config_plans_its_curves_without_repeating_itself() -> None:
    base = read_yaml(ROOT / "configs" / "fedpt" / "austen.yaml")
    planned = variants(True, base)
    f = base["fedpt"]
    overrides = [ov for _, ov in planned]
    assert [f"fedpt.emulator_layers={f['emulator_layers']}"] not in overrides  # the config's run
    assert len(planned) == len({tuple(ov) for ov in overrides})
