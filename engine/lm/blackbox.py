"""The black-box large LM: a DeepSpeed inference engine whose only API is logits for token ids."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np
import torch

from engine.device import resolve_precision
from engine.ds_start import start_deepspeed
from engine.ledger import deserialize_state, serialize_state

LOGIT_DTYPES = {"fp32": np.float32, "fp16": np.float16}


class BlackBoxLM:
    """Holds the large LM; answers next-token logits [b, t, V] for token ids, nothing else.

    No parameter and no gradient ever leaves it. Concurrent callers are batched: a request that
    arrives while a forward runs joins the next forward (right-padded to the longest request),
    so many callers cost few forwards.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        logits_dtype: str = "fp32",
        dtype: str = "fp32",
        kernel_inject: bool = False,
    ) -> None:
        """`dtype`: auto | fp32 | bf16, resolved on the device this process sees (auto: bf16 on a GPU
        that has it); `kernel_inject`: DeepSpeed's fused kernels (CUDA only, JIT-built with nvcc)."""
        deepspeed, accel = start_deepspeed()
        self.device = torch.device(accel.device_name())
        self.precision = resolve_precision(dtype, self.device)
        if self.device.type == "cpu" and (self.precision != "fp32" or kernel_inject):
            raise ValueError("the black box runs on a CPU: dtype bf16 and kernel_inject need a GPU")
        model.eval().requires_grad_(False)
        self.engine = deepspeed.init_inference(
            model,
            dtype=torch.bfloat16 if self.precision == "bf16" else torch.float32,
            replace_with_kernel_inject=kernel_inject,
        )
        self.module = self.engine.module
        self.vocab_size = int(model.config.vocab_size)
        self.wire_dtype = LOGIT_DTYPES[logits_dtype]
        self.num_params = sum(p.numel() for p in model.parameters())
        self._queue: list[tuple[np.ndarray, np.ndarray, Future]] = []
        self._queue_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self.forwards = 0  # how many forwards served the requests so far

    @torch.no_grad()
    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = self.module(
            input_ids=torch.from_numpy(ids.astype(np.int64)).to(self.device),
            attention_mask=torch.from_numpy(mask.astype(np.int64)).to(self.device),
        ).logits
        self.forwards += 1
        return out.float().cpu().numpy()

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask [b, t] (right padding) -> logits [b, t, V] float32, batched with other callers."""
        fut: Future = Future()
        with self._queue_lock:
            self._queue.append((np.asarray(ids), np.asarray(mask), fut))
        with self._run_lock:  # whoever holds it serves everything queued so far
            with self._queue_lock:
                batch, self._queue = self._queue, []
            if batch:
                self._serve(batch)
        return fut.result()

    def _serve(self, batch: list[tuple[np.ndarray, np.ndarray, Future]]) -> None:
        width = max(ids.shape[1] for ids, _, _ in batch)
        ids = np.concatenate([_pad(i, width) for i, _, _ in batch])
        mask = np.concatenate([_pad(m, width) for _, m, _ in batch])
        try:
            out = self._forward(ids, mask)
        except BaseException as exc:  # every waiting caller learns of it
            for *_, f in batch:
                f.set_exception(exc)
            return
        start = 0
        for i, _, f in batch:
            b, t = i.shape
            f.set_result(out[start : start + b, :t])
            start += b

    def logits_blob(self, blob: bytes) -> bytes:
        """The wire form: {"ids", "mask"} in, {"logits"} out (fp32 or fp16, as configured)."""
        req = deserialize_state(blob)
        out = self.logits(req["ids"], req["mask"])
        return serialize_state({"logits": out.astype(self.wire_dtype)})


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, width - a.shape[1]))) if a.shape[1] < width else a


class LocalLMLink:
    """The FL server's link to the black box in the same process (FedPT's Ray host and in-process
    runs): logits for token ids through the wire format, bytes counted as a remote link would."""

    def __init__(self, lm: BlackBoxLM) -> None:
        self.lm = lm
        self.bytes_up = self.bytes_down = 0
        self.restarts = 0

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        blob = serialize_state({"ids": ids.astype(np.int32), "mask": mask.astype(np.int8)})
        out = self.lm.logits_blob(blob)
        self.bytes_up += len(blob)
        self.bytes_down += len(out)
        return torch.from_numpy(deserialize_state(out)["logits"].astype(np.float32))

    def shutdown(self) -> None:
        self.lm = None  # type: ignore[assignment]
