"""Dataset registry: resolves a data set name (embedded, local file, hf:<name>) to splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.splits import ImageSplits, TextSplits, build_splits, subset_indices
from engine.data.tables import (
    LOCAL_EXTENSIONS,
    Table,
    read_jsonl,
    read_table,
    split_file_in_folder,
    split_train_test,
)
from engine.errors import ConfigError
from engine.registry import Registry

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


TextLoader = Callable[..., TextSplits]
_TEXT_DATASETS: Registry[TextLoader] = Registry("dataset")
_IMAGE_DATASETS: Registry[Callable[[], ImageSplits]] = Registry("image dataset")


def register_dataset(name: str, loader: TextLoader) -> TextLoader:
    """Register a text data set loader under `name` (duplicates are refused)."""
    return _TEXT_DATASETS.register(name, loader)


def embedded_datasets() -> list[str]:
    """Names of the registered text data sets (the embedded ones unless more were registered)."""
    return _TEXT_DATASETS.names()


def image_datasets() -> list[str]:
    return _IMAGE_DATASETS.names()


def load_text_dataset(
    name: str,
    *,
    text_key: str = "text",
    label_key: str | None = "label",
    group_key: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    seed: int = 0,
) -> TextSplits:
    """Load an embedded data set, a local .csv/.jsonl(.gz)/.json/.parquet file or folder of split
    files, or hf:<hub name>[:<config>]; see TextSplits for the result."""
    opts = {k: v for k, v in locals().items() if k != "name"}  # the keyword arguments above
    for key, value in (
        ("data.max_train_samples", max_train_samples),
        ("data.max_test_samples", max_test_samples),
    ):
        if value is not None and value < 1:
            raise ConfigError(key, f"must be >= 1 (got {value})")
    if name.startswith("hf:"):
        return _load_hub(name, **opts)
    if name in _TEXT_DATASETS:
        return _TEXT_DATASETS.get(name)(**opts)
    if _looks_like_path(name):
        return _load_local(name, **opts)
    raise ConfigError(
        "data.name",
        f"unknown dataset {name!r}; use one of {', '.join(embedded_datasets())}, "
        "a path to a .csv/.jsonl/.parquet file, or hf:<name>",
    )


def load_image_dataset(
    name: str,
    *,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    seed: int = 0,
) -> ImageSplits:
    """Load an embedded image data set (`fashion_mnist`), optionally seeded split subsets."""
    if name not in _IMAGE_DATASETS:
        raise ConfigError(
            "data.name", f"unknown image dataset {name!r}; use one of {', '.join(image_datasets())}"
        )
    full = _IMAGE_DATASETS.get(name)()
    train = subset_indices(len(full.train_labels), max_train_samples, seed)
    test = subset_indices(len(full.test_labels), max_test_samples, seed)
    return ImageSplits(
        name=full.name,
        train_images=full.train_images[train],
        train_labels=full.train_labels[train],
        test_images=full.test_images[test],
        test_labels=full.test_labels[test],
        num_labels=full.num_labels,
        label_names=full.label_names,
    )


def _looks_like_path(name: str) -> bool:
    return name.endswith(LOCAL_EXTENSIONS) or "/" in name or "\\" in name or Path(name).is_dir()


def _load_local(
    name: str, *, train_split: str, test_split: str, seed: int, **opts: Any
) -> TextSplits:
    path = Path(name).expanduser()
    if not path.exists():
        raise ConfigError("data.name", f"no such file or directory: {str(path)!r}")
    if path.is_dir():
        train_file = split_file_in_folder(path, train_split)
        if train_file is None:
            exts = "/".join(e.lstrip(".") for e in LOCAL_EXTENSIONS)
            raise ConfigError(
                "data.train_split", f"no {train_split}.{{{exts}}} file in folder {str(path)!r}"
            )
        test_file = split_file_in_folder(path, test_split)
        train = read_table(train_file)
        test = read_table(test_file) if test_file is not None else None
    elif not path.name.endswith(LOCAL_EXTENSIONS):
        raise ConfigError(
            "data.name",
            f"{str(path)!r}: unsupported file type; use .csv, .jsonl, .jsonl.gz, .json or .parquet",
        )
    else:
        train, test = read_table(path), None
    if test is None:
        train, test = split_train_test(train, seed)
    return build_splits(str(path), train, test, seed=seed, **opts)


# ---------------------------------------------------------------- the hub


def _load_hub(name: str, *, train_split: str, test_split: str, **opts: Any) -> TextSplits:
    """hf:<hub name>[:<config>] through datasets.load_dataset (needs network or an HF cache)."""
    parts = name[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 2:
        raise ConfigError("data.name", f"{name!r}: write hf:<hub name> or hf:<hub name>:<config>")
    hub_name, config = parts[0], (parts[1] if len(parts) == 2 else None)
    try:
        import datasets

        dataset_dict = datasets.load_dataset(hub_name, config)
    except Exception as exc:  # any failure to reach or parse the hub is a user-facing error
        what = hub_name if config is None else f"{hub_name} (config {config})"
        raise ConfigError(
            "data.name", f"cannot load hub dataset {what}: {type(exc).__name__}: {exc}"
        ) from exc
    tables = {}
    for config_key, split in (("data.train_split", train_split), ("data.test_split", test_split)):
        if split not in dataset_dict:
            raise ConfigError(
                config_key, f"split {split!r} not in {name} (splits: {', '.join(dataset_dict)})"
            )
        tables[split] = dataset_dict[split].to_dict()
    label_names = None
    label_key = opts.get("label_key")
    features = dataset_dict[train_split].features
    if label_key in features and hasattr(features[label_key], "names"):
        label_names = list(features[label_key].names)  # a ClassLabel: keep its class names
    return build_splits(
        name, tables[train_split], tables[test_split], known_label_names=label_names, **opts
    )


# ---------------------------------------------------------------- embedded data sets


@dataclass(frozen=True)
class _Embedded:
    folder: str
    label_names: list[str] | None  # None: the set has no label column
    natural_group: str | None

    def __call__(
        self,
        *,
        label_key: str | None,
        group_key: str | None,
        train_split: str,
        test_split: str,
        **opts: Any,
    ) -> TextSplits:
        if self.label_names is None and label_key == "label":
            label_key = None  # the default label key means "no labels" for unlabeled text
        tables = [
            self._read(split, key)
            for key, split in (("data.train_split", train_split), ("data.test_split", test_split))
        ]
        known = self.label_names if label_key == "label" else None
        return build_splits(
            self.folder,
            *tables,
            label_key=label_key,
            group_key=group_key if group_key is not None else self.natural_group,
            known_label_names=known,
            **opts,
        )

    def _read(self, split: str, config_key: str) -> Table:
        path = DATA_DIR / self.folder / f"{split}.jsonl.gz"
        if split not in ("train", "test"):
            raise ConfigError(
                config_key, f"split {split!r} not in {self.folder} (splits: train, test)"
            )
        if not path.is_file():
            raise ConfigError(
                "data.name",
                f"embedded data file missing: {path} (is fedray's data/ folder intact?)",
            )
        return read_jsonl(path)


FORTUNE_CATEGORIES = [
    "computers", "cookie", "definitions", "miscellaneous",
    "people", "politics", "songs-poems", "work",
]  # fmt: skip
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def _load_fashion_mnist() -> ImageSplits:
    path = DATA_DIR / "fashion_mnist" / "fashion_mnist_small.npz"
    if not path.is_file():
        raise ConfigError(
            "data.name", f"embedded data file missing: {path} (is fedray's data/ folder intact?)"
        )
    with np.load(path) as z:
        return ImageSplits(
            name="fashion_mnist",
            train_images=z["x_train"],
            train_labels=z["y_train"].astype(np.int64),
            test_images=z["x_test"],
            test_labels=z["y_test"].astype(np.int64),
            num_labels=len(FASHION_MNIST_CLASSES),
            label_names=list(FASHION_MNIST_CLASSES),
        )


register_dataset("amazon_reviews", _Embedded("amazon_reviews", ["other", "great"], None))
register_dataset("fortunes", _Embedded("fortunes", FORTUNE_CATEGORIES, "category"))
register_dataset("austen", _Embedded("austen", None, "book"))
_IMAGE_DATASETS.register("fashion_mnist", _load_fashion_mnist)
