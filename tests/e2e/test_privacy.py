"""Privacy guard: no raw input leaves a client worker in any algorithm.

Everything a client sends is captured where it leaves (the pickled ClientResult a worker returns, every
payload SFPrompt's client puts on the wire to the body server) and checked two ways: (1) no run of 16
consecutive token ids of any training text appears in the bytes (int32 or int64 encoded); (2) decoded
with fedray's own readers, every array is floating point (updates, activations, gradients) except the
attention mask SFPrompt sends by design (0/1 values: lengths, not content). Labels never leave either:
no integer array does. A positive control proves the byte scan finds ids when they are there.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.launch import start_run
from engine.backend import LocalBackend
from engine.config import load_config
from engine.ledger import deserialize_state
from engine.prepare import prepare
from engine.split import server as split_server
from engine.split.wire import unpack
from tests.conftest import tiny_overrides
from tests.e2e.test_fedpt_run import _cfg as fedpt_cfg

ROOT = Path(__file__).resolve().parents[2]
NEEDLE = 16  # consecutive tokens


def needles(cfg) -> list[bytes]:
    enc = prepare(cfg).train
    out = []
    for r in range(len(enc)):
        ids = enc.ids[enc.offsets[r] : enc.offsets[r + 1]]
        if len(ids) > NEEDLE + 1:  # skip the first token ([CLS]/<s>): shared by every text
            seq = np.asarray(ids[1 : NEEDLE + 1])
            out += [seq.astype(np.int32).tobytes(), seq.astype(np.int64).tobytes()]
    assert len(out) > 20
    return out


def leaks(payloads: list[bytes], found: list[bytes]) -> list[int]:
    return [i for i, p in enumerate(payloads) if any(n in p for n in found)]


class Capture:
    def __init__(self, monkeypatch) -> None:
        self.results: list[bytes] = []  # pickled ClientResults (what a worker returns)
        self.wire: list[bytes] = []  # SFPrompt client -> body server payloads
        real_run = LocalBackend.run_clients

        def run_clients(backend, tasks, blob, on_result):
            out = real_run(backend, tasks, blob, on_result)
            self.results += [pickle.dumps(r) for r in out.values()]
            return out

        def forward(link, key, blob, keep_graph):
            self.wire.append(blob)
            return link.runtime.forward(key, blob, keep_graph)

        def backward(link, key, blob):
            self.wire.append(blob)
            return link.runtime.backward(key, blob)

        monkeypatch.setattr(LocalBackend, "run_clients", run_clients)
        monkeypatch.setattr(split_server.LocalLink, "forward", forward)
        monkeypatch.setattr(split_server.LocalLink, "backward", backward)


def check_decoded(cap: Capture) -> None:
    for raw in cap.results:
        result = pickle.loads(raw)
        for name, arr in deserialize_state(result.blob).items():
            assert np.issubdtype(arr.dtype, np.floating), (name, arr.dtype)
    for blob in cap.wire:
        for name, t in unpack(blob).items():
            if name == "mask":
                assert set(torch.unique(t).tolist()) <= {0, 1}
            else:
                assert t.is_floating_point(), (name, t.dtype)


CASES = {
    "fedavg-lora": lambda: load_config(ROOT / "configs" / "quickstart.yaml", tiny_overrides()),
    "sfprompt": lambda: load_config(
        ROOT / "configs" / "sfprompt" / "amazon_reviews.yaml",
        tiny_overrides(
            **{"split.tail_layers": 1, "split.prompt_length": 4, "pruning.score_with": "split"}
        ),  # fmt: skip
    ),
    "fedpt": lambda: fedpt_cfg(),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_raw_input_leaves_a_client(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FEDRAY_CACHE", str(tmp_path / "cache"))
    cfg = CASES[name]()
    cap = Capture(monkeypatch)
    start_run(cfg, out=str(tmp_path / "run"), backend=LocalBackend())
    assert cap.results and (cap.wire or name != "sfprompt")
    found = needles(cfg)
    assert leaks(cap.results + cap.wire, found) == []
    check_decoded(cap)
    # positive control: the same scan finds the ids inside a pickled batch
    enc = prepare(cfg).train
    assert leaks([pickle.dumps(enc.ids[: enc.offsets[3]].copy())], found) == [0]
