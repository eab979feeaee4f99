"""Tokenized splits as flat arrays, and batches: length-grouped or random, dynamically padded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Encoded:
    """A tokenized split stored flat, cheap to ship through Ray's object store (zero-copy numpy)."""

    ids: np.ndarray  # int32 [total_tokens]
    offsets: np.ndarray  # int64 [n + 1]; row i is ids[offsets[i]:offsets[i + 1]]
    labels: np.ndarray  # int64 [n]; -1 where unlabeled

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class Pixels:
    """An image split: uint8 images [n, H, W] (grayscale) and int64 labels; batches are all one shape."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.ones(len(self.labels), dtype=np.int64)  # nothing to group by


def take(data: Encoded | Pixels, rows: np.ndarray) -> Encoded | Pixels:
    """The given rows of a split, in that order, as a split of its own."""
    if isinstance(data, Pixels):
        return Pixels(data.images[rows], data.labels[rows])
    starts, ends = data.offsets[rows], data.offsets[rows + 1]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=offsets[1:])
    ids = np.concatenate(
        [data.ids[a:b] for a, b in zip(starts, ends, strict=True)] or [data.ids[:0]]
    )
    return Encoded(ids.astype(np.int32, copy=False), offsets, data.labels[rows])


# Fashion-MNIST's pixel mean and std (on [0, 1]): inputs are standardised as torchvision does.
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530


def batch_shape(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(batch, length) of a collated batch: what its step cost depends on (images: length 1)."""
    if "input_ids" in batch:
        b, t = batch["input_ids"].shape
        return int(b), int(t)
    return int(batch["pixel_values"].shape[0]), 1


def encode(texts: list[str], labels: np.ndarray, tokenizer, max_length: int) -> Encoded:
    """Tokenize with truncation and no padding (padding happens per batch)."""
    rows = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
    return Encoded(ids=ids, offsets=offsets, labels=np.asarray(labels, dtype=np.int64))


def make_batches(
    indices: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    group_by_length: bool,
    mega_factor: int = 50,
) -> list[np.ndarray]:
    """One epoch of batches over `indices` (rows of the split).

    Length grouping follows the HF Trainer's LengthGroupedSampler: shuffle, cut into mega-batches of
    `mega_factor * batch_size`, sort each by length (longest first) and chunk it, so a batch holds
    texts of similar length and dynamic padding wastes little; batch order is then shuffled.
    """
    order = rng.permutation(np.asarray(indices))
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    mega = mega_factor * batch_size
    batches: list[np.ndarray] = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def eval_batches(n: int, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Fixed, seed-free evaluation batches sorted by length (identical whoever evaluates them)."""
    order = np.argsort(-lengths[:n], kind="stable")
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def collate(enc: Encoded | Pixels, rows: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the rows to the longest in the batch: input_ids/attention_mask [b, t], labels [b].

    Images: standardised pixel_values [b, 1, H, W] float32 and labels [b].
    """
    if isinstance(enc, Pixels):
        pixels = torch.from_numpy(enc.images[rows].astype(np.float32) / 255.0)
        return {
            "pixel_values": ((pixels - PIXEL_MEAN) / PIXEL_STD).unsqueeze(1),
            "labels": torch.from_numpy(enc.labels[rows].copy()),
        }
    lens = enc.lengths[rows]
    width = int(lens.max())
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, (r, n) in enumerate(zip(rows, lens, strict=True)):
        start = enc.offsets[r]
        ids[j, :n] = enc.ids[start : start + n]
        mask[j, :n] = 1
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(enc.labels[rows].copy()),
    }


def padded_tokens(batches: list[np.ndarray], lengths: np.ndarray) -> int:
    """Token positions processed (batch width x rows), the work dynamic padding actually does."""
    return int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))
