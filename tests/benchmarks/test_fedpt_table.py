"""benchmarks/fedpt_table.py's plan of runs, from a config (no run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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


def test_the_round_curve_is_the_gap_closed_in_log_perplexity_by_hand() -> None:
    import math

    from fedpt_table import curve_markdown, round_curve

    e = math.exp
    fedpt = {"records": [
        {"round": 1},  # no evaluation this round
        {"round": 2, "eval/perplexity": 10.0, "eval/large_perplexity": e(4.0),
         "eval/proxy_perplexity": e(3.5), "eval/proxy@1_perplexity": e(3.5),
         "eval/proxy@0.5_perplexity": e(3.75)},
        {"round": 3, "eval/perplexity": 9.0, "eval/large_perplexity": e(4.0),
         "eval/proxy_perplexity": e(3.0), "eval/proxy@1_perplexity": e(3.0),
         "eval/proxy@0.5_perplexity": e(3.5)},  # the direct run did not evaluate round 3
    ]}  # fmt: skip
    direct = {"records": [{"round": 2, "eval/perplexity": e(3.0)}, {"round": 3}]}
    (point,) = round_curve(fedpt, direct)
    assert point["round"] == 2
    gaps = point["gap_closed_by_alpha"]  # (4 - 3.5) / (4 - 3), (4 - 3.75) / (4 - 3)
    assert gaps == {1.0: pytest.approx(0.5), 0.5: pytest.approx(0.25)}
    md = curve_markdown({"name": "FedPT (config)", "by_round": [point]})
    assert "| 2 | 20.09 | 10.00 | 0.25 (42.5) | 0.50 (33.1) |" in md
