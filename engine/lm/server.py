"""FedPT's FL server: each round, the proxy-tuned large LM, large + alpha * (small_tuned - small_base),
from the black box's logits, distilled into the aggregated small LM on server-side public text; its
held-out evaluation and greedy samples. On Ray it runs in the black box's actor, on its device
(actors/lm_server.py); in process, in the driver."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.checkpoint import merge_state, split_state
from engine.config import RunConfig
from engine.data.batching import Encoded, collate, eval_batches
from engine.ledger import deserialize_state, serialize_state
from engine.lm.proxy import kd_loss, proxy_logits, sampling_log_probs
from engine.lm.samples import continue_all, prompts, side_by_side, to_markdown
from engine.lm.small import CPU, lm_vocab
from engine.methods import apply_method, get_method, load_trainable_state, trainable_state
from engine.models import load_model, load_tokenizer
from engine.train import derive_seed

DISTILL_STREAM = 4  # seed stream of the server's distillation batches


Memory = dict[str, dict[str, np.ndarray]]  # what FedPT's server remembers between rounds


class FedPTRoundServer:
    """What the runner asks of FedPT's server: the round end, evaluation, samples and checkpoints.

    The server's memory between rounds (fedpt.proxy_from: clients -> the round's broadcast state
    and the clients' accumulated updates) is kept here, in the driver, handed to every call and
    saved in checkpoints (`server/...` keys): the server itself is a function of its arguments, so a
    call a Ray host died in is simply made again (`_call`) and a resumed run continues exactly.
    """

    memory: Memory
    link = None  # clients never call the black box: only this server does

    def _call(self, method: str, *args: Any) -> tuple[Any, int]:
        """FedPTServer.<method>(*args), and how many restarts it took (0 in process)."""
        raise NotImplementedError

    def lost(self, result: object) -> bool:
        return False  # a call the server died in is redone by _call

    def recover(self) -> None:
        pass

    def end_round(self, weights: dict[int, float], state: dict, round: int = 0):
        (new_state, record, self.memory), restarts = self._call(
            "end_round", weights, state, round, self.memory
        )
        if record:
            record["server/restarts"] = restarts
        return new_state, record

    def evaluate(self, state: dict, batch_size: int) -> dict[str, float]:
        return self._call("evaluate", state, batch_size, self.memory)[0]

    def write_samples(self, state: dict, path: Path) -> None:
        text = self._call("samples", state, self.memory)[0]
        if text is not None:
            path.write_text(text)

    def with_state(self, blob: bytes) -> bytes:
        flat = {f"{part}/{k}": v for part, arrays in self.memory.items() for k, v in arrays.items()}
        return merge_state(blob, serialize_state(flat) if flat else None)

    def restore(self, blob: bytes) -> bytes:
        client, server = split_state(blob)
        self.memory = {}
        for key, value in (deserialize_state(server) if server else {}).items():
            part, name = key.split("/", 1)
            self.memory.setdefault(part, {})[name] = value
        return client


class LocalFedPTServer(FedPTRoundServer):
    """The FedPT server in the driver (in-process runs)."""

    def __init__(self, server: FedPTServer) -> None:
        self.server, self.memory = server, {}

    def _call(self, method: str, *args: Any) -> tuple[Any, int]:
        return getattr(self.server, method)(*args), 0

    def crash_after(self, requests: int = 2) -> None:
        """Fault injection (faults.server_kill_round): nothing to kill in process."""

    def shutdown(self) -> None:
        self.server.shutdown()


class FedPTServer:
    """The FL server of FedPT: base/tuned/student small LMs and a black-box link.

    On Ray it runs in the black box's actor, on its device (actors/lm_server.py: FedPTHost); in
    process, in the driver. Its models live on `device`; the link's logits come back to host memory.
    Every method is a function of its arguments (the memory comes in and goes out), see
    FedPTRoundServer.

    What the proxy adds to the large LM (`fedpt.proxy_from`): `global`, the paper's loop, takes
    tuned = the aggregated small LM, which after the first round also holds what distillation put
    in it (the large LM's knowledge, then added again); `clients` takes tuned = the initial adapter
    plus the sum of the clients' own aggregated updates (each round's aggregate minus the state
    broadcast for it), so only the clients' tuning is proxied. Without distillation both are equal.
    """

    def __init__(self, cfg: RunConfig, small_path: str, link: Any, public: Encoded,
                 public_rows: np.ndarray, test: Encoded, pad_id: int,
                 device: torch.device = CPU) -> None:  # fmt: skip
        self.cfg, self.f, self.link = cfg, cfg.fedpt, link
        self.public, self.public_rows, self.test, self.pad_id = public, public_rows, test, pad_id
        self.device = device
        vocab = lm_vocab(cfg.model.name)
        self.base = load_model(small_path, "causal_lm", 0, vocab, cfg.seed, pad_id).eval()
        method = get_method(cfg.method.name)
        params = method.params_type(**cfg.method.model_dump())
        torch.manual_seed(cfg.seed)  # the same adapter init as the clients' (built on the CPU)
        self.student = apply_method(copy.deepcopy(self.base), "causal_lm", params).to(device)
        self.base.to(device)
        self.tuned = copy.deepcopy(self.student).eval()  # frozen by use: only under no_grad
        self.initial = trainable_state(self.student)  # the clients' initial adapter, too
        self._fixed: dict[str, float] | None = None  # base large / base small: they never change

    def shutdown(self) -> None:
        self.link.shutdown()

    def proxied(self, state: dict, memory: Memory) -> dict:
        """The small LM's state whose difference from the base the proxy adds (proxy_from)."""
        if self.f.proxy_from == "global" or "clients" not in memory:
            return state
        return memory["clients"]

    def remember(self, state: dict, memory: Memory) -> Memory:
        """proxy_from: clients -> the memory after a round whose aggregate is `state`."""
        if self.f.proxy_from == "global":
            return {}
        start = memory.get("start", self.initial)
        clients = memory.get("clients", self.initial)
        return {"start": start, "clients": {k: clients[k] + (state[k] - start[k]) for k in state}}

    # -- the round ---------------------------------------------------------------------------
    def end_round(
        self, weights: dict[int, float], state: dict, round: int, memory: Memory
    ) -> tuple[dict, dict, Memory]:
        """(the state to broadcast next, the round's server record, the memory after the round)."""
        memory = self.remember(state, memory)
        if not self.f.distill:
            return state, {}, {**memory, "start": state} if memory else {}
        bytes0 = self.link.bytes_up + self.link.bytes_down
        load_trainable_state(self.tuned, self.proxied(state, memory))
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
        new_state = trainable_state(self.student)
        record = {"server/distill_loss": float(np.mean(losses)), "server/logit_bytes": sent}
        return new_state, record, {**memory, "start": new_state} if memory else {}

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
    @torch.no_grad()
    def samples(self, state: dict, memory: Memory) -> str | None:
        """Greedy continuations of the first test texts by the base and the proxy-tuned large LM,
        as markdown (None when fedpt.generate is 0)."""
        if not self.f.generate:
            return None
        tok = load_tokenizer(self.cfg.model.name)
        load_trainable_state(self.tuned, self.proxied(state, memory))
        ones = lambda ids: np.ones(tuple(ids.shape), dtype=np.int8)  # noqa: E731

        def large(ids: torch.Tensor) -> torch.Tensor:
            return self.link.logits(ids.cpu().numpy(), ones(ids)).to(self.device)

        def proxy(ids: torch.Tensor) -> torch.Tensor:
            return proxy_logits(large(ids), self.tuned(input_ids=ids).logits,
                                self.base(input_ids=ids).logits, self.f.alpha)  # fmt: skip

        ids, n = prompts(self.test, self.f.generate), self.f.generate_tokens
        outs = {name: continue_all(fn, ids, tok.decode, n, self.device)
                for name, fn in (("base large", large), ("proxy-tuned large", proxy))}  # fmt: skip
        return to_markdown(self.cfg.name, side_by_side(ids, tok.decode, outs))

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, state: dict, batch_size: int, memory: Memory) -> dict[str, float]:
        """Held-out perplexity / next-token accuracy of the proxy-tuned large LM (and, once, the bases)."""
        load_trainable_state(self.tuned, self.proxied(state, memory))
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
