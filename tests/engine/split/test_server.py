"""BodyRuntime: exact forward/backward, fp16 wire, frozen vs trained body, order-free round updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer

from engine.ledger import deserialize_state, serialize_state
from engine.split.server import BodyRuntime, LocalLink, ServerSpec

H = 64


class TinyBody(torch.nn.Module):
    """Two BERT layers: forward(hidden [b,T,h] float32, mask [b,T] int64) -> [b,T,h]."""

    def __init__(self) -> None:
        super().__init__()
        cfg = BertConfig(
            hidden_size=H,
            num_attention_heads=2,
            intermediate_size=128,
            num_hidden_layers=2,
            vocab_size=32,
            attn_implementation="eager",
        )
        self.layers = torch.nn.ModuleList([BertLayer(cfg) for _ in range(2)])

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=additive)
        return hidden


def make_body() -> TinyBody:
    torch.manual_seed(1234)  # the same weights for every copy
    return TinyBody().eval()


def make_batch(seed: int, b: int = 2, t: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hidden [b,t,H] float32, mask [b,t] with padding in row 1, upstream grad [b,t,H])."""
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((b, t, H)).astype(np.float32)
    mask = np.ones((b, t), dtype=np.int64)
    mask[1, t - 2 :] = 0
    grad = rng.standard_normal((b, t, H)).astype(np.float32)
    return hidden, mask, grad


def up(hidden: np.ndarray, mask: np.ndarray, dtype=np.float32) -> bytes:
    return serialize_state({"hidden": hidden.astype(dtype), "mask": mask.astype(np.int8)})


def grad_blob(grad: np.ndarray, dtype=np.float32) -> bytes:
    return serialize_state({"grad": grad.astype(dtype)})


def run_client(rt: BodyRuntime, key: tuple[int, int, int], batch) -> np.ndarray:
    hidden, mask, grad = batch
    rt.forward(key, up(hidden, mask), keep_graph=True)
    return deserialize_state(rt.backward(key, grad_blob(grad)))["grad"]


def test_forward_backward_match_direct_autograd() -> None:
    ref = make_body()
    rt = BodyRuntime(make_body(), ServerSpec())
    assert rt.init_seconds < 10  # no C++ JIT build on the first initialize (that takes 80+ s)
    link = LocalLink(rt)
    hidden, mask, g = make_batch(0)
    blob = link.forward((0, 3, 0), up(hidden, mask), keep_graph=True)
    assert rt.pending() == 1
    out = deserialize_state(blob)["hidden"]
    x = torch.from_numpy(hidden).requires_grad_(True)
    ref_out = ref(x, torch.from_numpy(mask))
    (ref_grad,) = torch.autograd.grad((ref_out * torch.from_numpy(g)).sum(), x)
    assert out.dtype == np.float32 and out.shape == hidden.shape
    np.testing.assert_allclose(out, ref_out.detach().numpy(), atol=1e-6, rtol=0)
    got = deserialize_state(link.backward((0, 3, 0), grad_blob(g)))["grad"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref_grad.numpy(), atol=1e-6, rtol=0)
    assert rt.pending() == 0
    # Deterministic: the same request gives the same bytes.
    assert rt.forward((0, 3, 1), up(hidden, mask), False) == rt.forward(
        (0, 4, 0), up(hidden, mask), False
    )


def test_fp16_wire_round_trips_as_fp16() -> None:
    rt = BodyRuntime(make_body(), ServerSpec())
    hidden, mask, g = make_batch(1)
    out16 = deserialize_state(rt.forward((0, 0, 0), up(hidden, mask, np.float16), True))["hidden"]
    # Computed in fp32 on the fp16-rounded input, then rounded to fp16 for the way back.
    h32 = hidden.astype(np.float16).astype(np.float32)
    out32 = deserialize_state(rt.forward((0, 0, 1), up(h32, mask), True))["hidden"]
    assert out16.dtype == np.float16
    np.testing.assert_array_equal(out16, out32.astype(np.float16))
    np.testing.assert_allclose(out16.astype(np.float32), out32, atol=1e-2)
    g16 = deserialize_state(rt.backward((0, 0, 0), grad_blob(g, np.float16)))["grad"]
    g32 = deserialize_state(rt.backward((0, 0, 1), grad_blob(g)))["grad"]
    assert g16.dtype == np.float16
    np.testing.assert_allclose(g16.astype(np.float32), g32, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_frozen_body_never_changes(stage: int) -> None:
    rt = BodyRuntime(make_body(), ServerSpec(zero_stage=stage))
    assert rt.stage == (0 if stage in (1, 2) else stage)  # no optimizer state to shard
    assert not any(p.requires_grad for p in rt.module.parameters())
    assert rt.body_state() == {}
    hidden, mask, g = make_batch(2)
    before = rt.forward((0, 0, 9), up(hidden, mask), keep_graph=False)
    grad = run_client(rt, (0, 0, 0), (hidden, mask, g))
    assert np.abs(grad).sum() > 0
    rt.forward((0, 1, 0), up(hidden, mask), keep_graph=True)  # never gets its backward
    rt.end_round({0: 1.0})
    assert rt.pending() == 0  # leftover graphs dropped
    assert rt.forward((1, 0, 9), up(hidden, mask), keep_graph=False) == before


def reference_update(
    state: dict[str, np.ndarray] | None,
    clients: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    weights: dict[int, float],
    lr: float,
) -> dict[str, np.ndarray]:
    """AdamW's first step on sum_c w_c * mean_c(grad) computed on a plain copy of the body."""
    ref = make_body()
    if state is not None:
        ref.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    params = dict(ref.named_parameters())
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    for c in sorted(clients):
        acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
        for hidden, mask, g in clients[c]:
            out = ref(torch.from_numpy(hidden), torch.from_numpy(mask))
            grads = torch.autograd.grad((out * torch.from_numpy(g)).sum(), list(params.values()))
            for n, gr in zip(params, grads, strict=True):
                acc[n] += gr.double()
        for n in params:
            total[n] += (acc[n] / len(clients[c])) * weights[c]
    for n, p in params.items():
        p.grad = total[n].float()
    torch.optim.AdamW(ref.parameters(), lr=lr).step()
    return {n: p.detach().numpy() for n, p in params.items()}


CLIENTS = {7: [make_batch(10), make_batch(11)], 2: [make_batch(12)]}
WEIGHTS = {7: 0.25, 2: 0.75}


def play(rt: BodyRuntime, order: list[tuple[int, int]]) -> None:
    """Run (client, step) requests in the given order (each client's own steps stay in order)."""
    for c, s in order:
        run_client(rt, (0, c, s), CLIENTS[c][s])


@pytest.mark.parametrize("stage", [0, 2])
def test_trained_body_steps_once_per_round_like_adamw(stage: int) -> None:
    lr = 1e-2
    rt = BodyRuntime(make_body(), ServerSpec(zero_stage=stage, train_body=True, lr=lr))
    initial = rt.body_state()
    assert set(initial) == {n for n, _ in make_body().named_parameters()}
    play(rt, [(7, 0), (2, 0), (7, 1)])
    for n, v in rt.body_state().items():  # nothing moves before the round ends
        np.testing.assert_array_equal(v, initial[n])
    rt.end_round(WEIGHTS)
    want = reference_update(None, CLIENTS, WEIGHTS, lr)
    got = rt.body_state()
    assert max(np.abs(got[n] - initial[n]).max() for n in initial) > lr / 2  # it did step
    for n in want:
        np.testing.assert_allclose(got[n], want[n], atol=1e-6, rtol=0, err_msg=n)


@pytest.mark.parametrize("stage", [0, 3])
def test_trained_body_update_is_independent_of_request_order(stage: int) -> None:
    spec = ServerSpec(zero_stage=stage, train_body=True, lr=1e-2)
    states = []
    for order in ([(7, 0), (7, 1), (2, 0)], [(2, 0), (7, 0), (7, 1)], [(7, 0), (2, 0), (7, 1)]):
        rt = BodyRuntime(make_body(), spec)
        play(rt, order)
        rt.end_round(dict(reversed(WEIGHTS.items())))
        states.append(rt.body_state())
    for other in states[1:]:
        for n, v in states[0].items():
            np.testing.assert_array_equal(other[n], v, err_msg=n)


@pytest.mark.parametrize("stage", [0, 2])
def test_load_body_state_then_step_starts_from_loaded_weights(stage: int) -> None:
    # ZeRO 1-3 step from an fp32 master copy: loading must update it, not only the module.
    lr = 1e-2
    rt = BodyRuntime(make_body(), ServerSpec(zero_stage=stage, train_body=True, lr=lr))
    loaded = {n: v + np.float32(0.05) for n, v in rt.body_state().items()}
    rt.load_body_state(loaded)
    for n, v in rt.body_state().items():
        np.testing.assert_array_equal(v, loaded[n])
    play(rt, [(7, 0), (7, 1), (2, 0)])
    rt.end_round(WEIGHTS)
    want = reference_update(loaded, CLIENTS, WEIGHTS, lr)
    got = rt.body_state()
    for n in want:
        np.testing.assert_allclose(got[n], want[n], atol=1e-6, rtol=0, err_msg=n)
    with pytest.raises(ValueError, match="missing"):
        rt.load_body_state({})


def test_unknown_key_no_graph_and_bad_specs() -> None:
    rt = BodyRuntime(make_body(), ServerSpec())
    hidden, mask, g = make_batch(3)
    with pytest.raises(KeyError, match=r"no graph kept for key \(0, 1, 2\)"):
        rt.backward((0, 1, 2), grad_blob(g))
    rt.forward((0, 1, 2), up(hidden, mask), keep_graph=False)
    assert rt.pending() == 0
    with pytest.raises(KeyError):
        rt.backward((0, 1, 2), grad_blob(g))
    run_client(rt, (0, 1, 3), (hidden, mask, g))
    with pytest.raises(KeyError):  # a graph serves one backward
        rt.backward((0, 1, 3), grad_blob(g))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="bf16"):
            BodyRuntime(make_body(), ServerSpec(dtype="bf16"))
        assert BodyRuntime(make_body(), ServerSpec(dtype="auto")).dtype == torch.float32
    with pytest.raises(ValueError, match="zero_stage"):
        BodyRuntime(make_body(), ServerSpec(zero_stage=4))


def test_trained_body_rejects_weights_for_clients_without_backward() -> None:
    rt = BodyRuntime(make_body(), ServerSpec(train_body=True, lr=1e-2))
    initial = rt.body_state()
    play(rt, [(2, 0)])
    with pytest.raises(ValueError, match=r"clients \[7\]"):
        rt.end_round(WEIGHTS)
    for n, v in rt.body_state().items():
        np.testing.assert_array_equal(v, initial[n])


def test_trained_body_state_resumes_adam_exactly() -> None:
    """Two rounds in one runtime == one round, body_state into a fresh runtime, another round."""
    spec = ServerSpec(zero_stage=0, train_body=True, lr=1e-2)
    whole = BodyRuntime(make_body(), spec)
    for _ in range(2):
        play(whole, [(7, 0), (2, 0)])
        whole.end_round(WEIGHTS)
    first = BodyRuntime(make_body(), spec)
    play(first, [(7, 0), (2, 0)])
    first.end_round(WEIGHTS)
    saved = first.body_state()
    assert any(k.startswith("adam.exp_avg/") for k in saved)
    resumed = BodyRuntime(make_body(), spec)
    resumed.load_body_state(saved)
    play(resumed, [(7, 0), (2, 0)])
    resumed.end_round(WEIGHTS)
    a, b = whole.body_state(), resumed.body_state()
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.cuda
def test_the_body_server_on_a_gpu_uses_nccl_and_answers_as_on_the_cpu() -> None:
    """The body on CUDA: DeepSpeed's process group is NCCL; its answers match the CPU's to 1e-4."""
    pytest.importorskip("deepspeed")
    rt = BodyRuntime(make_body(), ServerSpec(dtype="fp32"))
    assert rt.device.type == "cuda" and torch.distributed.get_backend() == "nccl"
    hidden = np.random.default_rng(0).standard_normal((2, 5, H)).astype(np.float32)
    mask = np.ones((2, 5), dtype=np.int8)
    out = deserialize_state(rt.forward((0, 0, 0), up(hidden, mask), keep_graph=False))["hidden"]
    with torch.no_grad():
        want = make_body()(torch.from_numpy(hidden), torch.from_numpy(mask).long()).numpy()
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)


def test_the_plain_torch_body_equals_deepspeeds_at_stage_0() -> None:
    """What --in-process runs without DeepSpeed: the same answers, AdamW steps and saved state."""
    spec = ServerSpec(train_body=True, lr=1e-2)
    runtimes = [BodyRuntime(make_body(), spec), BodyRuntime(make_body(), spec, use_deepspeed=False)]
    for r in range(2):  # two rounds: the second step starts from the first's Adam moments
        grads = [
            [run_client(rt, (r, c, 0), make_batch(10 * r + c)) for c in (0, 1)] for rt in runtimes
        ]
        for a, b in zip(*grads, strict=True):
            np.testing.assert_array_equal(a, b)
        for rt in runtimes:
            rt.end_round({0: 0.25, 1: 0.75})
    ds, plain = (rt.body_state() for rt in runtimes)
    assert sorted(ds) == sorted(plain) and any(k.startswith("adam.") for k in plain)
    for k in ds:
        np.testing.assert_array_equal(ds[k], plain[k], err_msg=k)
    fresh = BodyRuntime(make_body(), spec, use_deepspeed=False)
    fresh.load_body_state(plain)  # a resume on plain torch
    np.testing.assert_array_equal(
        run_client(fresh, (2, 0, 0), make_batch(7)),
        run_client(runtimes[0], (2, 0, 0), make_batch(7)),
    )
    with pytest.raises(ValueError, match="zero_stage 3 needs DeepSpeed"):
        BodyRuntime(make_body(), ServerSpec(zero_stage=3), use_deepspeed=False)
