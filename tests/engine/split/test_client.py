"""The SFPrompt client: split training equals unsplit backprop; pruning, local loss and traffic."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.algorithms.sfprompt import build_body
from engine.client import ClientTask, WorkerSpec
from engine.data.batching import Encoded, collate
from engine.ledger import deserialize_state
from engine.pruning import el2n, keep_hardest
from engine.split.client import SplitClientRuntime, SplitPlan, _Run
from engine.split.server import BodyRuntime, LocalLink, ServerSpec
from engine.split.wire import pack
from engine.train import TrainSpec

VOCAB = 120


def _spec() -> WorkerSpec:
    return WorkerSpec(
        model_name="tiny-bert-random",
        task="classification",
        num_labels=2,
        vocab_size=VOCAB,
        pad_id=0,
        seed=7,
        method="full",
        method_fields={},
    )


def _data(n: int = 24, seed: int = 0) -> Encoded:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 14, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(1, VOCAB, size=int(offsets[-1])).astype(np.int32)
    return Encoded(ids=ids, offsets=offsets, labels=rng.integers(0, 2, size=n).astype(np.int64))


class _NoServer:
    def forward(self, *a, **k):
        raise AssertionError("the local-loss phase must not talk to the server")

    backward = forward


def _runtime(plan: SplitPlan, link=None) -> tuple[SplitClientRuntime, torch.nn.Module]:
    spec = _spec()
    body = build_body(spec, plan)
    if link is None:
        link = LocalLink(BodyRuntime(build_body(spec, plan), ServerSpec()))
    data = _data()
    return SplitClientRuntime(spec, plan, data, data, link), body


@pytest.mark.parametrize("head,tail,train_head", [(0, 1, True), (1, 0, False), (0, 0, False)])
def test_split_backward_equals_unsplit_backprop(head, tail, train_head):
    plan = SplitPlan(head_layers=head, tail_layers=tail, prompt_length=4, train_head=train_head)
    rt, body = _runtime(plan)
    rt.model.eval()  # no dropout: both paths must be the same function
    body.eval()  # (the server always runs its body in eval mode)
    batch = collate(rt.train_data, np.arange(6), 0)
    params = [p for p in rt.model.parameters() if p.requires_grad]

    hidden, mask = rt.model.head(batch)
    loss = F.cross_entropy(rt.model.tail(body(hidden, mask), mask), batch["labels"])
    want = torch.autograd.grad(loss, params)

    run = _Run(1, 0, Counter(), {"flops": 0.0, "act": 0})
    got_loss = rt._split_step(batch, run, 0)
    assert got_loss == pytest.approx(float(loss.detach()), abs=1e-6)
    for p, g in zip(params, want, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-5)
    # What crossed the split: activations up and down, gradients up and down, exactly as packed.
    width = hidden.shape[1]
    up_acts = len(pack("none", hidden=hidden, mask=mask))
    assert run.traffic["up/activations"] == up_acts
    assert run.traffic["down/activations"] == len(pack("none", hidden=torch.zeros(6, width, 64)))
    assert (
        run.traffic["up/gradients"]
        == run.traffic["down/gradients"]
        == len(pack("none", grad=torch.zeros(6, width, 64)))
    )


def test_fp16_wire_halves_activation_bytes_and_stays_close():
    plan32 = SplitPlan(tail_layers=1, prompt_length=4)
    plan16 = SplitPlan(tail_layers=1, prompt_length=4, compress="fp16")
    out = {}
    for name, plan in (("fp32", plan32), ("fp16", plan16)):
        rt, _ = _runtime(plan)
        rt.model.eval()
        run = _Run(1, 0, Counter(), {"flops": 0.0, "act": 0})
        loss = rt._split_step(collate(rt.train_data, np.arange(8), 0), run, 0)
        out[name] = (loss, run.traffic["down/activations"])
    assert out["fp16"][0] == pytest.approx(out["fp32"][0], abs=2e-3)
    assert 0.45 < out["fp16"][1] / out["fp32"][1] < 0.55


def _task(rows: np.ndarray, steps: int | None = 2) -> ClientTask:
    spec = TrainSpec(
        batch_size=4,
        epochs=1,
        steps=steps,
        lr=1e-2,
        optimizer="adamw",
        weight_decay=0.0,
        max_grad_norm=1.0,
        group_by_length=True,
        task="classification",
        pad_id=0,
    )
    return ClientTask(round=1, client_id=3, rows=rows, seed=11, spec=spec)


def test_el2n_pruning_keeps_the_hardest_samples_by_the_clients_model():
    plan = SplitPlan(
        tail_layers=1, prompt_length=4, keep_ratio=0.25, local_loss=False, per_class=False
    )
    rt, _ = _runtime(plan)
    rows = np.arange(2, 22)
    blob = rt.initial_state()
    rt._load_global(0, blob)
    rt.model.eval()
    with torch.no_grad():
        batch = collate(rt.train_data, rows, 0)
        scores = el2n(rt.model.local_forward(batch), batch["labels"]).numpy()
    want = keep_hardest(rows, scores, 0.25)
    run = _Run(1, 3, Counter(), {"flops": 0.0, "act": 0})
    got = rt._prune(rows, np.random.default_rng(0), run)
    assert got.tolist() == want.tolist() and len(got) == 5
    assert not run.traffic  # scoring with the local model sends nothing


def test_local_loss_only_round_sends_nothing_over_the_split():
    plan = SplitPlan(tail_layers=1, prompt_length=4, prune=False, split_training=False)
    rt, _ = _runtime(plan, link=_NoServer())
    blob = rt.initial_state()
    res = rt.train_client(_task(np.arange(12), steps=None), blob)
    assert res.traffic == {}
    assert res.extra["local_steps"] == 3 and res.extra["split_steps"] == 0  # 12 rows / batch 4
    assert res.train.flops > 0


def test_a_round_is_deterministic_and_counts_split_traffic():
    plan = SplitPlan(tail_layers=1, prompt_length=4, keep_ratio=0.5)
    rt, _ = _runtime(plan)
    blob = rt.initial_state()
    a = rt.train_client(_task(np.arange(16)), blob)
    b = rt.train_client(_task(np.arange(16)), blob)
    assert a.blob == b.blob and a.traffic == b.traffic
    counts = np.bincount(rt.train_data.labels[:16])
    kept = sum(int(np.ceil(c / 2)) for c in counts if c)  # half of each label, rounded up
    assert a.extra["kept_samples"] == kept
    assert a.extra["local_steps"] == int(np.ceil(kept / 4))  # one epoch over the kept rows
    assert a.extra["split_steps"] == 2
    assert set(a.traffic) == {
        "up/activations",
        "down/activations",
        "up/gradients",
        "down/gradients",
    }
    assert a.blob != blob  # prompts and tail moved


def test_encoder_lr_steps_the_tail_block_at_its_own_rate():
    """AdamW moves each weight by about its group's rate per step: at encoder_lr 1e-9 the tail block
    barely moves while the prompt and the classifier move at train.lr (1e-2)."""

    def moved(encoder_lr: float | None) -> dict[str, float]:
        plan = SplitPlan(tail_layers=1, prompt_length=4, prune=False, encoder_lr=encoder_lr)
        rt, _ = _runtime(plan)
        blob = rt.initial_state()
        before, after = (
            deserialize_state(blob),
            deserialize_state(rt.train_client(_task(np.arange(8)), blob).blob),
        )
        out: dict[str, float] = {}
        for name, value in after.items():  # the largest move per part: tail, prompt, classifier
            part = "tail" if name.startswith("tail_blocks.") else name.split(".")[-2:][0]
            out[part] = max(out.get(part, 0.0), float(np.abs(value - before[name]).max()))
        return out

    same, own = moved(None), moved(1e-9)
    assert same["tail"] > 1e-3  # train.lr on every tensor: the block moves by ~1e-2 per step
    assert own["tail"] < 1e-7  # local loss 1 epoch (2 steps) + 2 split steps at ~1e-9 each
    assert own["prompt"] > 1e-3 and own["classifier"] > 1e-3
