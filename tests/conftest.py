"""Shared fixtures: one Ray session for every Ray test, quiet libraries, tiny run configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `cuda` run wherever a CUDA device is visible and are skipped elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) for the whole test session."""
    import ray

    from actors.cluster import init_ray

    init_ray(None, 2, False)
    yield ray
    ray.shutdown()


def run_records(run_dir) -> list[dict]:
    """The rows of a run directory's metrics.jsonl."""
    import json
    from pathlib import Path

    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def without_wall(records: list[dict]) -> list[dict]:
    """Records without their wall-clock keys, the only ones that differ between equal runs."""
    return [{k: v for k, v in r.items() if "wall" not in k} for r in records]


def record_diff(got: list[dict], want: list[dict]) -> list[tuple]:
    """(round, key, wanted, got) for every key of `want`'s records whose value `got` does not match,
    plus a row count mismatch as ("rows", len(want), len(got)): an assertion message that names
    what differs."""
    out: list[tuple] = [] if len(got) == len(want) else [("rows", len(want), len(got))]
    for g, w in zip(got, want, strict=False):
        out += [(w["round"], k, w[k], g.get(k)) for k in w if g.get(k) != w[k]]
    return out


def tiny_overrides(**extra: object) -> list[str]:
    """A run that takes seconds: tiny random BERT, 200 reviews, 3 rounds of 2 local steps."""
    base = {
        "name": "tiny",
        "model.name": "tiny-bert-random",
        "model.max_length": 64,
        "data.max_train_samples": 200,
        "data.max_test_samples": 64,
        "data.partition.kind": "iid",
        "data.partition.alpha": None,
        "federation.num_clients": 6,
        "federation.clients_per_round": 3,
        "federation.rounds": 3,
        "train.local_steps": 2,
        "train.batch_size": 8,
        "eval.every": 1,
        "eval.batch_size": 16,
        "wandb.mode": "disabled",
        # tiny-bert-random has 2 blocks: SFPrompt's body keeps both (the embedded 1 + 1 cut needs 3+)
        "split.head_layers": 0,
        "split.tail_layers": 0,
    }
    base.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in base.items()]


def tiny_sweep(tmp_path, base, space: dict, extra: dict, **fields: object):
    """A sweep file over tiny runs of `base` (fixed overrides: tiny_overrides(**extra)), maximizing
    eval/accuracy, one client worker per trial, W&B off; `fields` replace any of these."""
    from pathlib import Path

    import yaml

    pairs = (o.split("=", 1) for o in tiny_overrides(**extra))
    raw = {
        "name": "tiny-sweep",
        "base": str(base),
        "overrides": {k: yaml.safe_load(v) for k, v in pairs},
        "space": space,
        "metric": "eval/accuracy",
        "mode": "max",
        "trial": {"driver_cpus": 0.25, "workers": 1},
        "wandb": {"mode": "disabled"},
        **fields,
    }
    path = Path(tmp_path) / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
