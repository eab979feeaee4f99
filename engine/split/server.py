"""The SFPrompt body server runtime: a transformer body behind DeepSpeed, fed clients' activations."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.device import local_device, resolve_precision
from engine.ds_start import start_deepspeed
from engine.ledger import deserialize_state, serialize_state

Key = tuple[int, int, int]  # (round, client_id, step)

log = logging.getLogger(__name__)

# numpy has no bfloat16, so the wire carries float32 or float16 (fp16 halves the bytes).
_WIRE_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}
_COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ServerSpec:
    zero_stage: int = 0  # 0..3, passed to the DeepSpeed config
    train_body: bool = False  # SplitFed baseline: the body is trained on the server
    lr: float = 1e-4  # body learning rate when train_body
    # "auto" (bf16 on a GPU that has it, else fp32; decided where the body runs), "fp32" or "bf16"
    dtype: str = "fp32"
    seed: int = 0


class ServerLost(Exception):
    """The body server died or did not answer; the caller may retry against a restarted one."""


def _check_spec(spec: ServerSpec) -> None:
    if spec.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {spec.zero_stage!r}")
    if spec.dtype not in (*_COMPUTE_DTYPES, "auto"):
        raise ValueError(f"dtype must be 'auto', 'fp32' or 'bf16', got {spec.dtype!r}")
    if spec.dtype == "bf16" and not torch.cuda.is_available():
        raise ValueError("dtype 'bf16' needs CUDA: bf16 compute on CPU is refused (use 'fp32')")
    if spec.train_body and not spec.lr > 0:
        raise ValueError(f"lr must be > 0 when train_body, got {spec.lr!r}")


def _ds_config(spec: ServerSpec, stage: int, precision: str) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": 1,  # required key; batching is the clients' business
        "gradient_accumulation_steps": 1,
        # DeepSpeed's default is 1.0: it would silently clip the round's aggregated gradient.
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": precision == "bf16"},
        "zero_allow_untested_optimizer": True,  # a torch AdamW: no fused/CPU Adam JIT build
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def _to_wire(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    return t.detach().to("cpu", dtype=_WIRE_DTYPES[dtype]).numpy()


ADAM = "adam."  # body_state keys of the AdamW moments (stage 0)


class BodyRuntime:
    """Forward/backward on clients' activations through one body; not thread-safe (callers lock)."""

    def __init__(self, body: torch.nn.Module, spec: ServerSpec, use_deepspeed: bool = True) -> None:
        """`use_deepspeed=False`: the same body on plain torch (ZeRO stage 0 only; what
        `fedray run --in-process` uses, so it runs where DeepSpeed is not installed)."""
        _check_spec(spec)
        if not use_deepspeed and spec.zero_stage:
            raise ValueError(f"zero_stage {spec.zero_stage} needs DeepSpeed; use 0 without it")
        t0 = time.perf_counter()
        if use_deepspeed:
            deepspeed, accel = start_deepspeed()
            self.device = torch.device(accel.device_name(int(os.environ.get("LOCAL_RANK", "0"))))
        else:
            deepspeed, self.device = None, local_device()
        self.spec = spec
        self._ds = deepspeed
        self.precision = resolve_precision(spec.dtype, self.device)  # auto: this device's choice
        if not use_deepspeed and spec.train_body and self.precision == "bf16":
            if spec.dtype == "bf16":  # plain torch keeps no fp32 master copy of bf16 weights
                raise ValueError("a trained bf16 body needs DeepSpeed; use dtype fp32 or auto")
            self.precision = "fp32"
        self.dtype = _COMPUTE_DTYPES[self.precision]
        torch.manual_seed(spec.seed)
        body.eval()
        body.requires_grad_(spec.train_body)
        stage = spec.zero_stage
        # ZeRO-3 swaps torch.nn.functional.linear for its own wrapper process-wide and never puts
        # it back; the module hooks that gather partitioned weights do not need it, and other
        # code in this process (an in-process client, the tests) must keep torch's own.
        linear = torch.nn.functional.linear
        if deepspeed is None:
            body.to(self.device, dtype=self.dtype)
            opt = torch.optim.AdamW(body.parameters(), lr=spec.lr) if spec.train_body else None
            engine: Any = _TorchEngine(body, opt)
        elif spec.train_body:
            opt = torch.optim.AdamW(body.parameters(), lr=spec.lr)
            engine, *_ = deepspeed.initialize(
                model=body, optimizer=opt, config=_ds_config(spec, stage, self.precision)
            )
        else:
            # What deepspeed 0.19.8 accepts with no trainable params and no optimizer: stage 0
            # (engine.optimizer is None) and stage 3 (a DeepSpeedZeRoOffload that partitions the
            # params); stages 1 and 2 assert "zero stage N requires an optimizer". Those stages
            # only shard optimizer state and gradients, which a frozen body does not have, so
            # they run as stage 0. (init_inference is not needed.)
            stage = 0 if stage in (1, 2) else stage
            engine, *_ = deepspeed.initialize(
                model=body, config=_ds_config(spec, stage, self.precision)
            )
        torch.nn.functional.linear = linear
        self.engine = engine
        self.stage = stage
        # We call engine.module, not engine(...): engine.forward hooks the outputs so that a
        # plain autograd call raises "Direct calls to tensor.backward() are not supported"
        # (stage 0, or no optimizer). ZeRO-3's gather/release hooks live on the submodules,
        # so they still run.
        self.module: torch.nn.Module = engine.module
        self.module.eval()  # no dropout, ever: every client of a round sees the same function
        self._named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        self._graphs: dict[Key, tuple[torch.Tensor, torch.Tensor]] = {}
        self._acc: dict[int, list[torch.Tensor]] = {}  # client -> float64 grad sums per param
        self._count: dict[int, int] = {}
        self.num_params = sum(int(getattr(p, "ds_numel", p.numel())) for p in body.parameters())
        self.init_seconds = time.perf_counter() - t0

    # -- per-request compute -------------------------------------------------------------------

    def forward(self, key: Key, blob: bytes, keep_graph: bool) -> bytes:
        """Run the body on {"hidden": [b,T,h], "mask": [b,T]}; returns {"hidden": [b,T,h]}."""
        key = _norm_key(key)
        data = deserialize_state(blob)
        hidden, mask = _field(data, "hidden"), _field(data, "mask")
        wire = _wire_dtype(hidden, "hidden")
        if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
            raise ValueError(
                f"want hidden [b,T,h] and mask [b,T], got {hidden.shape}, {mask.shape}"
            )
        if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != np.bool_:
            raise ValueError(f"mask must be an integer array (1 = real, 0 = pad), got {mask.dtype}")
        x = torch.from_numpy(hidden).to(self.device, dtype=self.dtype)
        m = torch.from_numpy(mask.astype(np.int64)).to(self.device)
        if not keep_graph:
            with torch.no_grad():
                out = self.module(x, m)
            return serialize_state({"hidden": _to_wire(out, wire)})
        x.requires_grad_(True)
        with torch.enable_grad():
            out = self.module(x, m)
        self._graphs[key] = (x, out)  # a retried forward replaces its stale graph
        return serialize_state({"hidden": _to_wire(out, wire)})

    def backward(self, key: Key, blob: bytes) -> bytes:
        """Pop key's graph, backprop {"grad": d loss/d out}; returns {"grad": d loss/d input}."""
        key = _norm_key(key)
        if key not in self._graphs:
            raise KeyError(
                f"no graph kept for key {key} (round, client, step): forward(keep_graph=True) "
                f"was not called, backward already ran, or the round ended; pending: {len(self._graphs)}"
            )
        grad = _field(deserialize_state(blob), "grad")
        wire = _wire_dtype(grad, "grad")
        x, out = self._graphs[key]
        if tuple(grad.shape) != tuple(out.shape):
            raise ValueError(f"grad shape {grad.shape} != forward output shape {tuple(out.shape)}")
        del self._graphs[key]
        g = torch.from_numpy(grad).to(self.device, dtype=out.dtype)
        params = [p for _, p in self._named]
        # autograd.grad leaves p.grad untouched: params and optimizer see nothing until end_round.
        grads = torch.autograd.grad(out, [x, *params], grad_outputs=g, materialize_grads=True)
        if params:
            self._accumulate(key[1], grads[1:])
        return serialize_state({"grad": _to_wire(grads[0], wire)})

    def _accumulate(self, client_id: int, grads: tuple[torch.Tensor, ...]) -> None:
        # float64 sums: a client's own steps arrive in order, so this is deterministic.
        acc = self._acc.get(client_id)
        if acc is None:
            self._acc[client_id] = [g.detach().to(torch.float64) for g in grads]
            self._count[client_id] = 1
            return
        for a, g in zip(acc, grads, strict=True):
            a.add_(g.detach().to(torch.float64))
        self._count[client_id] += 1

    # -- round boundary ------------------------------------------------------------------------

    def end_round(self, weights: dict[int, float]) -> None:
        """Drop leftover graphs; when training the body, one AdamW step on the weighted mean grad."""
        if self._graphs:
            log.warning("end_round: dropping %d graphs that got no backward", len(self._graphs))
            self._graphs.clear()
        if not self.spec.train_body:
            return
        w = {int(c): float(v) for c, v in weights.items()}
        missing = sorted(set(w) - set(self._acc))
        try:
            if missing:
                raise ValueError(f"end_round: no backward was received from clients {missing}")
            if w and abs(sum(w.values()) - 1.0) > 1e-6:
                raise ValueError(f"end_round: weights must sum to 1, got {sum(w.values())!r}")
            dropped = sorted(set(self._acc) - set(w))
            if dropped:
                log.warning("end_round: discarding gradients of clients %s (no weight)", dropped)
            if w:
                self._step(self._mean_grads(w))
        finally:
            self._acc.clear()
            self._count.clear()

    def _mean_grads(self, weights: dict[int, float]) -> list[torch.Tensor]:
        """sum_c w_c * acc_c / count_c in float64, clients in sorted id order (order-free result)."""
        total: list[torch.Tensor] | None = None
        for c in sorted(weights):
            n, w = self._count[c], weights[c]
            terms = [(a / n) * w for a in self._acc[c]]
            total = (
                terms if total is None else [t.add_(s) for t, s in zip(total, terms, strict=True)]
            )
        assert total is not None
        return [t.to(p.dtype) for t, (_, p) in zip(total, self._named, strict=True)]

    def _step(self, grads: list[torch.Tensor]) -> None:
        # d/dp sum(p * g) = g exactly, so engine.backward on this surrogate puts exactly g where
        # DeepSpeed keeps gradients for the stage (p.grad at stage 0, ZeRO's partitioned buffers
        # at 1-3, reduced across ranks as usual); engine.step then runs the AdamW step.
        params = [p for _, p in self._named]
        with self._gathered(params):
            surrogate = sum((p * g).sum() for p, g in zip(params, grads, strict=True))
            self.engine.backward(surrogate)
        self.engine.step()

    def _gathered(
        self, params: list[torch.Tensor], modifier_rank: int | None = None
    ) -> contextlib.AbstractContextManager:
        """ZeRO-3 holds params partitioned; this gathers them whole for the block (else no-op).
        `modifier_rank`: the rank whose changes inside the block are kept (None: read only)."""
        if self.stage != 3:
            return contextlib.nullcontext()
        return self._ds.zero.GatheredParameters(params, modifier_rank=modifier_rank)

    # -- state -----------------------------------------------------------------------------------

    def body_state(self) -> dict[str, np.ndarray]:
        """Trainable body params as float32 arrays (the optimizer's fp32 master copy if it has one).

        At ZeRO stage 0 the AdamW moments and step count come along (`adam.*` keys), so a
        resumed run continues exactly; at stages 1-3 the moments restart from zero on resume.
        """
        out: dict[str, np.ndarray] = {}
        with self._gathered([p for _, p in self._named]):
            for name, p in self._named:
                full = self._master(p)
                t = p if full is None else full
                out[name] = t.detach().to("cpu", dtype=torch.float32).numpy().copy()
        out.update(self._adam_state())
        return out

    def _torch_adam(self) -> torch.optim.Optimizer | None:
        opt = getattr(self.engine, "optimizer", None)
        return opt if self.stage == 0 and isinstance(opt, torch.optim.Optimizer) else None

    def _adam_state(self) -> dict[str, np.ndarray]:
        opt = self._torch_adam()
        if opt is None:
            return {}
        out: dict[str, np.ndarray] = {}
        for name, p in self._named:
            st = opt.state.get(p)
            if not st:
                continue
            out[f"{ADAM}step/{name}"] = np.asarray(float(st["step"]), dtype=np.float64)
            for slot in ("exp_avg", "exp_avg_sq"):
                out[f"{ADAM}{slot}/{name}"] = st[slot].detach().cpu().numpy().copy()
        return out

    def _load_adam_state(self, state: dict[str, np.ndarray]) -> None:
        opt = self._torch_adam()
        if opt is None:
            return
        for name, p in self._named:
            if f"{ADAM}step/{name}" not in state:
                continue
            opt.state[p] = {
                "step": torch.tensor(float(state[f"{ADAM}step/{name}"])),
                **{
                    slot: torch.from_numpy(np.array(state[f"{ADAM}{slot}/{name}"])).to(self.device)
                    for slot in ("exp_avg", "exp_avg_sq")
                },
            }

    def load_body_state(self, state: dict[str, np.ndarray]) -> None:
        """Set the trainable params (and the optimizer's master copy); optimizer moments stay."""
        self._load_adam_state(state)
        state = {k: v for k, v in state.items() if not k.startswith(ADAM)}
        names = {n for n, _ in self._named}
        if set(state) != names:
            raise ValueError(
                f"body state keys differ: missing {sorted(names - set(state))}, "
                f"unexpected {sorted(set(state) - names)}"
            )
        params = [p for _, p in self._named]
        with torch.no_grad(), self._gathered(params, modifier_rank=0):
            for name, p in self._named:
                value = torch.from_numpy(np.asarray(state[name])).to(self.device)
                if tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"{name}: shape {tuple(value.shape)} != {tuple(p.shape)}")
                p.copy_(value.to(p.dtype))
        # ZeRO 1-3 and the bf16 optimizer step from an fp32 master copy: update it too, or the
        # next step would start from the old weights. A no-op at stage 0 fp32.
        if self._ds is None:
            return  # plain torch: the params are the master copy
        from deepspeed.utils import safe_set_full_fp32_param

        for name, p in self._named:
            value = torch.from_numpy(np.asarray(state[name])).to(self.device, torch.float32)
            safe_set_full_fp32_param(p, value)

    def _master(self, p: torch.Tensor) -> torch.Tensor | None:
        """DeepSpeed's fp32 master copy of a param, if it keeps one."""
        if self._ds is None:
            return None
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(p)

    def pending(self) -> int:
        """Graphs kept by forward(keep_graph=True) that await their backward."""
        return len(self._graphs)


class _TorchEngine:
    """The part of DeepSpeed's engine BodyRuntime uses, on plain torch (stage 0: p.grad, AdamW)."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self.module, self.optimizer = module, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


class LocalLink:
    """In-process stand-in for ServerLink (the in-process backend and unit tests)."""

    def __init__(self, runtime: BodyRuntime) -> None:
        self.runtime = runtime

    def forward(self, key: Key, blob: bytes, keep_graph: bool) -> bytes:
        return self.runtime.forward(key, blob, keep_graph)

    def backward(self, key: Key, blob: bytes) -> bytes:
        return self.runtime.backward(key, blob)


def _norm_key(key: Any) -> Key:
    if len(key) != 3:
        raise ValueError(f"key must be (round, client_id, step), got {key!r}")
    r, c, s = (int(k) for k in key)
    return (r, c, s)


def _field(data: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in data:
        raise ValueError(f"payload lacks {name!r}; has {sorted(data)}")
    return data[name]


def _wire_dtype(a: np.ndarray, name: str) -> np.dtype:
    if a.dtype not in _WIRE_DTYPES:
        raise ValueError(f"{name} must be float32 or float16 on the wire, got {a.dtype}")
    return a.dtype


def server_lost(result: object) -> bool:
    """A client task that failed because the body server died (directly or wrapped by Ray)."""
    return isinstance(result, ServerLost) or isinstance(getattr(result, "cause", None), ServerLost)
