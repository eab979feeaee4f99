"""benchmarks/fedpt_table.py's plan of runs, from a config (no run)."""

from __future__ import annotations

import json
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


def _seed_table(gap: float, proxy: float) -> dict:
    row = {"name": "FedPT (config)", "gap_closed": gap, "gap_closed_by_alpha": {"0.5": gap / 2},
           "proxy_ppl": proxy, "large_base_ppl": 50.0, "bytes_per_client_round": 5.0,
           "flops_per_client_round": 3.0, "peak_memory_bytes": 4.0}  # fmt: skip
    failed = {"name": "proxy_from global", "error": "RuntimeError: out of memory"}
    direct = {"bytes_per_client_round": 10.0, "flops_per_client_round": 12.0,
              "peak_memory_bytes": 8.0}  # fmt: skip
    return {"rows": [row, failed], "direct": direct}


def test_the_seeds_summary_is_mean_and_sample_std_by_hand(tmp_path: Path) -> None:
    from fedpt_table import seed_summary, write_seeds

    tables = [_seed_table(0.2, 40.0), _seed_table(0.4, 45.0), _seed_table(0.3, 35.0)]
    (v,) = seed_summary(tables)  # the variant that failed on a seed is left out
    assert v["name"] == "FedPT (config)"
    assert v["by_seed"]["gap closed"] == [0.2, 0.4, 0.3]
    assert v["gap closed"] == (pytest.approx(0.3), pytest.approx(0.1))  # sqrt(0.02 / 2)
    assert v["gap closed, alpha 0.5"] == (pytest.approx(0.15), pytest.approx(0.05))
    assert v["proxy / base large ppl"] == (pytest.approx(0.8), pytest.approx(0.1))  # 0.8, 0.9, 0.7
    assert v["device bytes vs direct"] == (pytest.approx(0.5), 0.0)
    assert v["device FLOPs vs direct"][0] == pytest.approx(0.25)
    assert v["device peak memory vs direct"][0] == pytest.approx(0.5)
    md = write_seeds(tmp_path, "fedpt_table", [v], [4, 5, 6, 7])  # a fourth seed still to run
    assert "| run | figure | seed 4 | seed 5 | seed 6 | mean +- std |" in md
    assert "| FedPT (config) | gap closed | 0.200 | 0.400 | 0.300 | 0.300 +- 0.100 |" in md
    assert (tmp_path / "fedpt_table_seeds.md").read_text() == md
    assert json.loads((tmp_path / "fedpt_table_seeds.json").read_text())[0]["name"] == v["name"]


@pytest.mark.parametrize(
    "argv, field",
    [(["--seeds", "0"], "--seeds 0"),
     (["--seeds", "3", "--direct", "runs/x"], "--direct given 1 times for 3 seed(s)"),
     (["--fedpt", "runs/a", "--fedpt", "runs/b"], "--fedpt given 2 times for 1 seed(s)"),
     (["--direct-set", "seed=4"], "--direct-set seed=4"),
     (["--direct-set", "train.lr"], "--direct-set train.lr"),
     (["--seeds", "2", "--set", "seed=4"], "seed=")],
)  # fmt: skip
def test_bad_seeds_arguments_exit_2_naming_the_flag(argv, field, capsys) -> None:
    from fedpt_table import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert field in capsys.readouterr().err


def _finished_run(run_dir: Path, overrides: list[str]) -> Path:
    """A run folder as start_run leaves it: its config and one evaluated round."""
    from engine.config import apply_overrides, dump_config, validate_config

    cfg = validate_config(apply_overrides(read_yaml(ROOT / "configs" / "fedpt" / "qwen_pair.yaml"),
                                          overrides))  # fmt: skip
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    (run_dir / "metrics.jsonl").write_text(json.dumps(
        {"round": 3, "eval/perplexity": 30.0, "time/wall_s": 12.5}) + "\n")  # fmt: skip
    (run_dir / "clients.jsonl").write_text("")
    (run_dir / "summary.json").write_text("{}")
    return run_dir


def test_direct_set_reaches_the_direct_run_only_and_reuse_checks_it(tmp_path: Path) -> None:
    from fedpt_table import DIRECT, _reused, parse_args, reuse_run

    args = parse_args(["--seeds", "2", "--direct-set", "train.lr=0.0015",
                       "--direct", "d0", "--direct", "d1"])  # fmt: skip
    assert [_reused(args, i) for i in (0, 1)] == [(Path("d0"), None), (Path("d1"), None)]
    config = ROOT / "configs" / "fedpt" / "qwen_pair.yaml"
    common = ["wandb.mode=disabled", "seed=1"]
    tuned = _finished_run(tmp_path / "tuned", [*common, *DIRECT, "train.lr=0.0015"])
    res = reuse_run(config, tuned, [*common, *DIRECT, *args.direct_set], "--direct")
    assert res["wall_s"] == 12.5 and res["run_dir"] == str(tuned)
    with pytest.raises(SystemExit, match="--direct .*tuned: its config differs"):
        reuse_run(config, tuned, [*common, *DIRECT], "--direct")  # the run at the configured lr
    with pytest.raises(SystemExit, match="its config differs"):  # another seed's run
        reuse_run(config, tuned, ["wandb.mode=disabled", "seed=0", *DIRECT, "train.lr=0.0015"],
                  "--direct")  # fmt: skip
