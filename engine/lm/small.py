"""FedPT's small LM for the clients: the configured one, or a layer-drop emulator of the large LM
(distilled from it on public text, built once and cached), and the loaders both sides share."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.assets import cache_root
from engine.config import RunConfig
from engine.data.batching import Encoded
from engine.errors import ConfigError
from engine.lm.emulator import decoder_layers, distill_emulator, layer_drop
from engine.models import load_model, load_tokenizer, resolve_model_path

CPU = torch.device("cpu")


def small_model_path(
    cfg: RunConfig,
    public: Encoded,
    public_rows: np.ndarray,
    pad_id: int,
    device: torch.device = CPU,
) -> str:
    """The clients' small LM: the configured one, or the layer-drop emulator (built and cached; its
    distillation from the large LM runs on `device`: the black box's, on Ray).

    A build of N distillation steps continues the longest cached build of fewer steps with the same
    model, layers, lr, seed and public text (its optimizer state is kept beside it), so sweeping
    `fedpt.emulator_distill_steps` upwards pays each step once; the result equals a fresh build.
    """
    f = cfg.fedpt
    if f.small_model is not None:
        return resolve_model_path(f.small_model)

    key = [cfg.model.name, f.emulator_layers, f.emulator_distill_steps, f.emulator_distill_lr,
           cfg.seed, cfg.model.max_length, hashlib.sha256(public_rows.tobytes()).hexdigest()]  # fmt: skip
    if device.type != "cpu":  # a GPU build differs in the last bits: cached apart (CPU keys stay)
        key.append(device.type)
    root = cache_root() / "emulators"
    out = root / f"{cfg.model.name.replace('/', '_')}-{_digest(key)}"
    if (out / "config.json").is_file():
        return str(out)
    large = functools.cache(lambda: load_lm(cfg.model.name, cfg.seed, pad_id).to(device))
    small, opt, done = _emulator_start(cfg, root, key, large, pad_id, device)
    if f.emulator_distill_steps > done:
        blocks = packed_blocks(public, public_rows, cfg.model.max_length)  # [n, t], no padding
        batches = [
            torch.from_numpy(blocks[i : i + f.distill_batch_size]).to(device)
            for i in range(0, len(blocks), f.distill_batch_size)
        ]
        distill_emulator(small, large(), batches, f.emulator_distill_steps, f.emulator_distill_lr,
                         1.0, cfg.seed, optimizer=opt, start=done)  # fmt: skip
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")  # concurrent builders (sweep trials)
    small.save_pretrained(tmp)
    if f.emulator_distill_steps:
        torch.save(opt.state_dict(), tmp / OPTIMIZER_FILE)
    (tmp / EMULATOR_FILE).write_text(json.dumps({"key": key, "layers": _kept(small)}))
    try:
        tmp.rename(out)  # whole or not at all
    except OSError:  # another process installed the same build first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


EMULATOR_FILE = "fedray_emulator.json"
OPTIMIZER_FILE = "distill_optimizer.pt"
STEPS = 2  # index of the distillation steps in an emulator's cache key


def _digest(key: list) -> str:
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def _emulator_start(
    cfg: RunConfig, root: Path, key: list, large: Any, pad_id: int, device: torch.device = CPU
):
    """(emulator, its distillation optimizer, steps done): the longest cached shorter build, or a fresh cut."""
    best, done = None, 0
    for meta in root.glob(f"*/{EMULATOR_FILE}"):
        if ".tmp" in meta.parent.name:
            continue  # an unfinished build
        other = json.loads(meta.read_text()).get("key")
        if (isinstance(other, list) and len(other) == len(key)
                and other[:STEPS] + other[STEPS + 1 :] == key[:STEPS] + key[STEPS + 1 :]
                and done < other[STEPS] < key[STEPS]
                and (meta.parent / OPTIMIZER_FILE).is_file()):  # fmt: skip
            best, done = meta.parent, other[STEPS]
    if best is None:
        small = layer_drop(large(), cfg.fedpt.emulator_layers)
    else:
        small = load_model(str(best), "causal_lm", 0, lm_vocab(cfg.model.name), cfg.seed, pad_id)
        small.to(device)
    opt = torch.optim.AdamW(decoder_layers(small).parameters(), lr=cfg.fedpt.emulator_distill_lr)
    if best is not None:
        opt.load_state_dict(torch.load(best / OPTIMIZER_FILE, weights_only=True))
    return small, opt, done


def _kept(small: torch.nn.Module) -> list[int] | None:
    return getattr(small.config, "emulator_layers", None)


def packed_blocks(enc: Encoded, rows: np.ndarray, length: int) -> np.ndarray:
    """The rows' token ids concatenated and cut into full blocks [n, length] (int64, no padding)."""
    ids = np.concatenate([enc.ids[enc.offsets[r] : enc.offsets[r + 1]] for r in rows])
    n = len(ids) // length
    if n == 0:
        raise ConfigError(
            "fedpt.public_fraction",
            f"the public text holds {len(ids)} tokens < one block of {length}",
        )
    return ids[: n * length].reshape(n, length).astype(np.int64)


def load_lm(name: str, seed: int, pad_id: int) -> torch.nn.Module:
    """A causal LM by name or path, in eval mode (seeded: the same in every process)."""
    return load_model(name, "causal_lm", 0, lm_vocab(name), seed, pad_id).eval()


def lm_vocab(name: str) -> int:
    """The large LM's vocabulary size (its tokenizer's length)."""
    return len(load_tokenizer(name))
