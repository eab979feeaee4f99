"""FedPT: checks, the clients' small LM (or its layer-drop emulator), and the server's proxy + distillation.

A round is FedAvg's (clients LoRA-tune the small LM); then `FedPTServer.end_round` builds the
proxy-tuned large LM, large + alpha * (small_tuned - small_base), from the black box's logits and
distils it into the aggregated small LM on server-side public text. What it returns is the next
round's global state. On Ray the server side (emulator build, proxy + distillation, evaluation)
runs in the black box's actor, on its device (actors/lm_server.py); in process, in the driver.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import RunConfig
from engine.data.batching import Encoded, collate, eval_batches
from engine.errors import ConfigError
from engine.lm.proxy import kd_loss, proxy_logits, sampling_log_probs
from engine.methods import apply_method, get_method, load_trainable_state, trainable_state
from engine.models import TINY_MODELS, load_model, resolve_model_path
from engine.train import derive_seed

DISTILL_STREAM = 4  # seed stream of the server's distillation batches
CPU = torch.device("cpu")


def check_fedpt(cfg: RunConfig) -> None:
    """FedPT's user errors, before anything starts (the tokenizer check needs both tokenizers)."""
    if cfg.model.task != "causal_lm":
        raise ConfigError("model.task", "fedpt tunes language models; use task: causal_lm")
    from engine.lm.emulator import parse_layers

    depth, budget = _shape(cfg.model.name)
    if cfg.fedpt.small_model is None:
        try:
            parse_layers(cfg.fedpt.emulator_layers, depth)
        except ValueError as exc:
            raise ConfigError("fedpt.emulator_layers", str(exc)) from None
    if budget is not None and cfg.model.max_length > budget:
        raise ConfigError(
            "model.max_length", f"{cfg.model.max_length} > the large LM's context of {budget}"
        )
    if cfg.fedpt.small_model is not None:
        check_same_tokenizer(cfg.model.name, cfg.fedpt.small_model)
    on_cpu = "the black box runs on CPUs (fedpt.server_num_gpus: 0)"
    if cfg.fedpt.server_dtype == "bf16" and not cfg.fedpt.server_num_gpus:
        raise ConfigError(
            "fedpt.server_dtype", f"bf16 needs a GPU but {on_cpu}; set it, or use auto or fp32"
        )
    if cfg.fedpt.kernel_inject and not cfg.fedpt.server_num_gpus:
        raise ConfigError(
            "fedpt.kernel_inject",
            f"DeepSpeed's kernels need a GPU but {on_cpu}; set it or turn it off",
        )


def _shape(name: str) -> tuple[int, int | None]:
    """(decoder layers, context length) from the config alone."""
    if name in TINY_MODELS:
        conf = TINY_MODELS.get(name)("causal_lm", 0, 8).config
    else:
        from transformers import AutoConfig

        conf = AutoConfig.from_pretrained(resolve_model_path(name))
    return int(conf.num_hidden_layers), getattr(conf, "max_position_embeddings", None)


def check_same_tokenizer(large: str, small: str) -> None:
    """Proxy-tuning adds logits id by id: the pair must share one vocabulary."""
    from engine.models import load_tokenizer

    a, b = load_tokenizer(large).get_vocab(), load_tokenizer(small).get_vocab()
    if a != b:
        diff = len(set(a.items()) ^ set(b.items()))
        raise ConfigError(
            "fedpt.small_model",
            f"{small!r} and {large!r} have different vocabularies ({diff} entries differ); "
            "use a same-tokenizer pair",
        )


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
    from engine.assets import cache_root

    key = [cfg.model.name, f.emulator_layers, f.emulator_distill_steps, f.emulator_distill_lr,
           cfg.seed, cfg.model.max_length, hashlib.sha256(public_rows.tobytes()).hexdigest()]  # fmt: skip
    if device.type != "cpu":  # a GPU build differs in the last bits: cached apart (CPU keys stay)
        key.append(device.type)
    root = cache_root() / "emulators"
    out = root / f"{cfg.model.name.replace('/', '_')}-{_digest(key)}"
    if (out / "config.json").is_file():
        return str(out)
    large = functools.cache(lambda: _load_lm(cfg.model.name, cfg.seed, pad_id).to(device))
    small, opt, done = _emulator_start(cfg, root, key, large, pad_id, device)
    if f.emulator_distill_steps > done:
        from engine.lm.emulator import distill_emulator

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
    from engine.lm.emulator import decoder_layers, layer_drop

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
        small = load_model(str(best), "causal_lm", 0, _vocab(cfg.model.name), cfg.seed, pad_id)
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


def _load_lm(name: str, seed: int, pad_id: int) -> torch.nn.Module:
    return load_model(name, "causal_lm", 0, _vocab(name), seed, pad_id).eval()


def _vocab(name: str) -> int:
    from engine.models import load_tokenizer

    return len(load_tokenizer(name))


class FedPTServer:
    """The FL server of FedPT: base/tuned/student small LMs and a black-box link.

    On Ray it runs in the black box's actor, on its device (actors/lm_server.py: FedPTHost); in
    process, in the driver. Its models live on `device`; the link's logits come back to host memory.
    """

    def __init__(self, cfg: RunConfig, small_path: str, link: Any, public: Encoded,
                 public_rows: np.ndarray, test: Encoded, pad_id: int,
                 device: torch.device = CPU) -> None:  # fmt: skip
        self.cfg, self.f, self.link = cfg, cfg.fedpt, link
        self.public, self.public_rows, self.test, self.pad_id = public, public_rows, test, pad_id
        self.device = device
        vocab = _vocab(cfg.model.name)
        self.base = load_model(small_path, "causal_lm", 0, vocab, cfg.seed, pad_id).eval()
        method = get_method(cfg.method.name)
        params = method.params_type(**cfg.method.model_dump())
        torch.manual_seed(cfg.seed)  # the same adapter init as the clients' (built on the CPU)
        self.student = apply_method(copy.deepcopy(self.base), "causal_lm", params).to(device)
        self.base.to(device)
        self.tuned = copy.deepcopy(self.student).eval()  # frozen by use: only under no_grad
        self._fixed: dict[str, float] | None = None  # base large / base small: they never change
        self.logit_bytes = 0

    # -- what the runner asks of a round's server ---------------------------------------------
    def lost(self, result: object) -> bool:
        return False  # the link itself retries once against a restarted black box

    def recover(self) -> None:
        pass

    def with_state(self, blob: bytes) -> bytes:
        return blob  # the global small-LM state is all FedPT's server carries between rounds

    def restore(self, blob: bytes) -> bytes:
        return blob

    def shutdown(self) -> None:
        self.link.shutdown()

    def crash_after(self, requests: int = 2) -> None:
        """Fault injection (faults.server_kill_round): a no-op here; the Ray host (FedPTHost) dies."""

    # -- the round ---------------------------------------------------------------------------
    def end_round(self, weights: dict[int, float], state: dict, round: int = 0):
        bytes0 = self.link.bytes_up + self.link.bytes_down
        restarts0 = getattr(self.link, "restarts", 0)
        if not self.f.distill:
            return state, {}
        load_trainable_state(self.tuned, state)
        load_trainable_state(self.student, state)
        rng = np.random.default_rng(derive_seed(self.cfg.seed, round, DISTILL_STREAM))
        torch.manual_seed(derive_seed(self.cfg.seed, round, DISTILL_STREAM))
        params = [p for p in self.student.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.f.distill_lr)
        self.student.train()
        losses = []
        for _ in range(self.f.distill_steps):
            rows = rng.choice(self.public_rows, size=self.f.distill_batch_size, replace=False)
            batch = self._collate(self.public, np.sort(rows))
            teacher = self._proxy(batch, self.f.temperature, self.f.top_p)
            logits = self.student(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            loss = kd_loss(logits, teacher, self.f.distill_temperature, batch["attention_mask"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        sent = self.link.bytes_up + self.link.bytes_down - bytes0
        return trainable_state(self.student), {
            "server/distill_loss": float(np.mean(losses)),
            "server/logit_bytes": sent,
            # the black box died mid-request and the link retried against its restart (stateless)
            "server/restarts": getattr(self.link, "restarts", 0) - restarts0,
        }

    def _collate(self, enc: Encoded, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in collate(enc, rows, self.pad_id).items()}

    @torch.no_grad()
    def _logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The black box's, the tuned small LM's and the base small LM's logits on a batch."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        large = self.link.logits(ids.cpu().numpy(), mask.cpu().numpy()).to(self.device)
        tuned = self.tuned(input_ids=ids, attention_mask=mask).logits
        base = self.base(input_ids=ids, attention_mask=mask).logits
        return large, tuned, base

    @torch.no_grad()
    def _proxy(self, batch: dict, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
        """log-probs of the proxy-tuned large LM on a batch [b, t, V]."""
        large, tuned, base = self._logits(batch)
        return sampling_log_probs(
            proxy_logits(large, tuned, base, self.f.alpha), temperature, top_p
        )

    # -- samples -------------------------------------------------------------------------------
    def write_samples(self, state: dict, path: Path) -> None:
        text = self.samples(state)
        if text is not None:
            path.write_text(text)

    @torch.no_grad()
    def samples(self, state: dict, prompt_tokens: int = 16) -> str | None:
        """Greedy continuations of the first test texts by the base and the proxy-tuned large LM,
        as markdown (None when fedpt.generate is 0)."""
        from engine.models import load_tokenizer

        if not self.f.generate:
            return None
        tok = load_tokenizer(self.cfg.model.name)
        load_trainable_state(self.tuned, state)
        ones = lambda ids: np.ones(tuple(ids.shape), dtype=np.int8)  # noqa: E731

        def large(ids: torch.Tensor) -> torch.Tensor:
            return self.link.logits(ids.cpu().numpy(), ones(ids)).to(self.device)

        def proxy(ids: torch.Tensor) -> torch.Tensor:
            return proxy_logits(large(ids), self.tuned(input_ids=ids).logits,
                                self.base(input_ids=ids).logits, self.f.alpha)  # fmt: skip

        lines = [f"# Greedy samples ({self.cfg.name})", ""]
        for r in range(min(self.f.generate, len(self.test))):
            ids = self.test.ids[self.test.offsets[r] : self.test.offsets[r + 1]][:prompt_tokens]
            prompt = torch.from_numpy(ids.astype(np.int64))[None].to(self.device)
            lines += [f"## Sample {r + 1}", "", f"prompt: {tok.decode(ids)!r}", ""]
            for name, fn in (("base large", large), ("proxy-tuned large", proxy)):
                out = _greedy(fn, prompt, self.f.generate_tokens)[0].cpu()
                lines += [f"- {name}: {tok.decode(out)!r}"]
            lines.append("")
        return "\n".join(lines)

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, state: dict, batch_size: int) -> dict[str, float]:
        """Held-out perplexity / next-token accuracy of the proxy-tuned large LM (and, once, the bases)."""
        load_trainable_state(self.tuned, state)
        sums: dict[str, list[float]] = {}
        for rows in eval_batches(len(self.test), self.test.lengths, batch_size):
            batch = self._collate(self.test, rows)
            ids, mask = batch["input_ids"], batch["attention_mask"]
            large, tuned, base = self._logits(batch)
            named = {"proxy": proxy_logits(large, tuned, base, self.f.alpha)}
            for a in self.f.eval_alphas:
                named[f"proxy@{a:g}"] = proxy_logits(large, tuned, base, a)
            if self._fixed is None:
                named.update(large=large, small_base=base)
            for name, logits in named.items():
                _add(sums.setdefault(name, [0.0, 0, 0]), logits, ids, mask)
        out = {f"eval/{n}_{k}": v for n, s in sums.items() for k, v in _metrics(s).items()}
        if self._fixed is None:
            self._fixed = {k: v for k, v in out.items() if "proxy" not in k}
        return {**out, **self._fixed}


def _greedy(next_logits, prompt: torch.Tensor, tokens: int) -> torch.Tensor:
    """Greedy continuation of prompt [1, t] for `tokens` steps; next_logits(ids) -> [1, t, V]."""
    ids = prompt
    for _ in range(tokens):
        nxt = next_logits(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids[:, prompt.shape[1] :]


def _add(acc: list, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """Next-token NLL sum, token count and hits over the real positions (as engine.train does)."""
    logits, target = logits[:, :-1].float(), ids[:, 1:]
    m = mask[:, 1:].bool()
    lp = torch.log_softmax(logits[..., : logits.shape[-1]], dim=-1)
    target = target.clamp_max(lp.shape[-1] - 1)
    nll = -lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    acc[0] += float(nll[m].sum())
    acc[1] += int(m.sum())
    acc[2] += int((lp.argmax(-1) == target)[m].sum())


def _metrics(acc: list) -> dict[str, float]:
    n = max(acc[1], 1)
    return {"perplexity": float(np.exp(min(acc[0] / n, 50.0))), "accuracy": acc[2] / n}


def start_fedpt(cfg: RunConfig, prep: Any, spec: Any, backend: Any) -> tuple[Any, Any]:
    """The FedPT server (with the black box and the clients' small LM, built first) and the
    clients' spec: on Ray one actor on the black box's device (actors/lm_server.py), in process
    the same objects in the driver, on its device."""
    from dataclasses import replace
    from functools import partial

    from engine.backend import LocalBackend

    factory = partial(_load_lm, cfg.model.name, cfg.seed, prep.pad_id)
    f = cfg.fedpt
    blackbox = {
        "logits_dtype": f.logits_dtype,
        "dtype": f.server_dtype,
        "kernel_inject": f.kernel_inject,
    }
    data = (prep.public, prep.public_rows, prep.test, prep.pad_id)
    if isinstance(backend, LocalBackend):
        from engine.device import local_device
        from engine.lm.blackbox import BlackBoxLM, LocalLMLink

        device = local_device()
        small = small_model_path(cfg, prep.public, prep.public_rows, prep.pad_id, device)
        link = LocalLMLink(BlackBoxLM(factory(), **blackbox))
        server: Any = FedPTServer(cfg, small, link, *data, device=device)
    else:
        from actors.lm_server import FedPTHost, FedPTHostLink

        handle = FedPTHost.options(num_cpus=f.server_num_cpus, num_gpus=f.server_num_gpus).remote(
            cfg, data, factory, blackbox, cfg.resources.torch_threads
        )
        server = FedPTHostLink(handle, cfg.resources.task_timeout_s)
        small = server.small_model
    return replace(spec, model_name=small), server
