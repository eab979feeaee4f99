"""The FedPT emulator cache: a longer build continues a shorter cached one and equals a fresh build."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

import engine.lm.small as small
from engine.lm.small import small_model_path
from engine.prepare import prepare
from tests.e2e.test_fedpt_run import _cfg


def _weights(path: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def test_longer_emulator_build_continues_the_cached_one_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDRAY_CACHE", str(tmp_path / "cache"))
    starts: list[int] = []
    real = small.distill_emulator

    def spy(*args, **kwargs):
        starts.append(kwargs.get("start", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(small, "distill_emulator", spy)  # as small_model_path calls it
    cfg = _cfg(**{"fedpt.emulator_distill_steps": 2})
    prep = prepare(cfg)
    build = lambda c: small_model_path(c, prep.public, prep.public_rows, prep.pad_id)  # noqa: E731
    short = build(cfg)
    assert build(cfg) == short and starts == [0]  # cached: no second distillation
    five = cfg.model_copy(
        update={"fedpt": cfg.fedpt.model_copy(update={"emulator_distill_steps": 5})}
    )
    continued = build(five)
    assert starts == [0, 2] and continued != short
    a, shortw = _weights(continued), _weights(short)
    shutil.rmtree(tmp_path / "cache")
    fresh = build(five)
    assert starts == [0, 2, 0] and fresh == continued  # the same cache entry, rebuilt from zero
    b = _weights(fresh)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], shortw[k]) for k in a)  # the three extra steps moved it
