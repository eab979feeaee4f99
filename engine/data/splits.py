"""Train/test splits as fedray uses them, and how a pair of tables (columns) becomes one: texts,
int64 labels mapped from any label column, the natural-split group column, seeded subsets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.data.tables import Table, num_rows
from engine.errors import ConfigError


@dataclass(frozen=True)
class TextSplits:
    """Train/test texts with int64 labels (-1 = unlabeled) and the optional natural-split column."""

    name: str
    train_texts: list[str]
    train_labels: np.ndarray  # int64 [N_train]
    test_texts: list[str]
    test_labels: np.ndarray  # int64 [N_test]
    train_groups: list[str] | None
    num_labels: int
    label_names: list[str]


@dataclass(frozen=True)
class ImageSplits:
    """Train/test uint8 images [N, H, W] with int64 labels."""

    name: str
    train_images: np.ndarray  # uint8 [N_train, 28, 28]
    train_labels: np.ndarray  # int64 [N_train]
    test_images: np.ndarray  # uint8 [N_test, 28, 28]
    test_labels: np.ndarray  # int64 [N_test]
    num_labels: int
    label_names: list[str]


# A text loader takes the keyword arguments of load_text_dataset (less `name`).
def build_splits(
    name: str,
    train: Table,
    test: Table,
    *,
    text_key: str,
    label_key: str | None,
    group_key: str | None,
    max_train_samples: int | None,
    max_test_samples: int | None,
    seed: int,
    known_label_names: list[str] | None = None,
    **_: Any,
) -> TextSplits:
    """Check the columns, map the labels to ints and take the seeded subsets."""
    keys = [
        ("data.text_key", text_key),
        ("data.label_key", label_key),
        ("data.group_key", group_key),
    ]
    for table in (train, test):
        for config_key, column in keys:
            if column is not None and column not in table:
                if config_key == "data.group_key" and table is test:
                    continue  # groups are only needed on the train split
                cols = ", ".join(table)
                raise ConfigError(config_key, f"column {column!r} not in {name} (columns: {cols})")
    tr = subset_indices(num_rows(train), max_train_samples, seed)
    te = subset_indices(num_rows(test), max_test_samples, seed)
    train_texts = [_as_text(train[text_key][i], name, text_key) for i in tr]
    test_texts = [_as_text(test[text_key][i], name, text_key) for i in te]
    if label_key is None:
        train_labels = np.full(len(tr), -1, dtype=np.int64)
        test_labels = np.full(len(te), -1, dtype=np.int64)
        num_labels, label_names = 0, []
    else:
        # Map over the full splits so that subsetting never changes the label ids.
        all_train, all_test, label_names = _map_labels(
            train[label_key], test[label_key], name, label_key, known_label_names
        )
        train_labels, test_labels = all_train[tr], all_test[te]
        num_labels = len(label_names)
    groups = None if group_key is None else [str(train[group_key][i]) for i in tr]
    return TextSplits(
        name=name,
        train_texts=train_texts,
        train_labels=train_labels,
        test_texts=test_texts,
        test_labels=test_labels,
        train_groups=groups,
        num_labels=num_labels,
        label_names=label_names,
    )


def _map_labels(
    train: Sequence[Any],
    test: Sequence[Any],
    name: str,
    label_key: str,
    known_label_names: list[str] | None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    values = list(train) + list(test)
    bad = [v for v in values if v is None or (isinstance(v, float) and np.isnan(v))]
    if bad:
        raise ConfigError(
            "data.label_key", f"column {label_key!r} of {name} has {len(bad)} empty values"
        )
    if all(isinstance(v, (str, np.str_)) for v in values):
        names = sorted(set(values))
        index = {v: i for i, v in enumerate(names)}
        ids = np.array([index[v] for v in values], dtype=np.int64)
    else:
        ids = _int_labels(values, name, label_key)
        # -1 marks an unlabeled row (e.g. the hidden GLUE test labels); it is not a class.
        n = int(ids.max()) + 1 if len(ids) else 0
        names = known_label_names if known_label_names is not None else [str(i) for i in range(n)]
        if n > len(names):
            raise ConfigError(
                "data.label_key",
                f"label {n - 1} of {name} is out of range for {len(names)} label names",
            )
    return ids[: len(train)], ids[len(train) :], list(names)


def _int_labels(values: list[Any], name: str, label_key: str) -> np.ndarray:
    try:
        floats = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(
            "data.label_key",
            f"column {label_key!r} of {name} mixes strings and numbers; use one type",
        ) from None
    ids = floats.astype(np.int64)
    if not np.array_equal(ids, floats) or (len(ids) and ids.min() < -1):
        raise ConfigError(
            "data.label_key",
            f"column {label_key!r} of {name} must hold strings or class ids >= 0 (-1: unlabeled)",
        )
    return ids


def subset_indices(n: int, k: int | None, seed: int) -> np.ndarray:
    """All rows, or k rows chosen with the seed, kept in their original order."""
    if k is None or k >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def _as_text(value: Any, name: str, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(
            "data.text_key", f"column {key!r} of {name} holds a non-text value: {value!r}"
        )
    return value
