"""End to end on Ray: the run-directory contract, determinism across pool sizes, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.launch import resume_run, start_run
from engine import runner
from engine.config import load_config
from engine.versions import stack_versions
from tests.conftest import run_records, tiny_overrides, without_wall
from tests.contract import ROUND_KEYS, SUMMARY_KEYS

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def lora_run(ray_session, tmp_path_factory) -> Path:
    cfg = load_config(QUICKSTART, tiny_overrides(**{"resources.num_workers": 2}))
    return start_run(cfg, out=str(tmp_path_factory.mktemp("run") / "lora"))


def test_run_directory_contract(lora_run: Path) -> None:
    recs = run_records(lora_run)
    assert [r["round"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert ROUND_KEYS <= set(r), ROUND_KEYS - set(r)
        assert r["clients/sampled"] == 3 and r["clients/completed"] == 3
    summary = json.loads((lora_run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["rounds_completed"] == 3
    assert summary["versions"] == stack_versions()
    assert summary["metrics"]["accuracy"] == recs[-1]["eval/accuracy"]
    # Cumulative bytes are the running sum of each round's up + down traffic.
    total = 0
    for r in recs:
        total += r["comm/bytes_up"] + r["comm/bytes_down"]
        assert r["comm/bytes_total_cum"] == total
    assert summary["comm_bytes_total"] == total
    partition = json.loads((lora_run / "partition.json").read_text())
    sizes = [c["size"] for c in partition["clients"]]
    assert sum(sizes) == 200 and max(sizes) - min(sizes) <= 1
    assert all(sum(c["label_histogram"]) == c["size"] for c in partition["clients"])
    assert (lora_run / "config.yaml").is_file()
    assert sorted(p.name for p in (lora_run / "checkpoints").iterdir()) == [
        "round_00002",
        "round_00003",
    ]


def test_lora_uploads_only_trainable_state(lora_run: Path) -> None:
    summary = json.loads((lora_run / "summary.json").read_text())
    clients = [json.loads(x) for x in (lora_run / "clients.jsonl").read_text().splitlines()]
    # A safetensors payload is the float32 tensors plus a header of a few hundred bytes per tensor.
    payload = 4 * summary["trainable_params"]
    for c in clients:
        assert payload < c["bytes_up"] < payload + 300 * 20
        assert c["bytes_up"] == c["bytes_down"]
    assert summary["trainable_params"] < summary["total_params"] / 10


def test_same_metrics_with_one_or_two_workers(lora_run: Path, tmp_path: Path) -> None:
    cfg = load_config(QUICKSTART, tiny_overrides(**{"resources.num_workers": 1}))
    one = start_run(cfg, out=str(tmp_path / "one"))
    assert without_wall(run_records(one)) == without_wall(run_records(lora_run))


def test_resume_after_interruption_matches(lora_run: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = load_config(QUICKSTART, tiny_overrides(**{"resources.num_workers": 2}))
    real_round = runner.run_round

    def dies_in_round_2(rnd, *args, **kwargs):
        if rnd == 2:
            raise KeyboardInterrupt  # as if killed once round 1's checkpoint was on disk
        return real_round(rnd, *args, **kwargs)

    monkeypatch.setattr(runner, "run_round", dies_in_round_2)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        start_run(cfg, out=str(out))
    assert [r["round"] for r in run_records(out)] == [1]
    monkeypatch.setattr(runner, "run_round", real_round)
    resume_run(out)
    assert without_wall(run_records(out)) == without_wall(run_records(lora_run))
    a = json.loads((out / "summary.json").read_text())["metrics"]
    b = json.loads((lora_run / "summary.json").read_text())["metrics"]
    assert a == b
