"""Dataset registry: resolves a data set name (embedded, local file, hf:<name>) to splits."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError
from engine.registry import Registry

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
LOCAL_EXTENSIONS = (".jsonl.gz", ".jsonl", ".json", ".csv", ".parquet")
TEST_FRACTION = 0.2  # a single local file is split 80/20 (seeded)

# A table is its columns, in file order: column name -> one value per row.
Table = dict[str, list[Any]]


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
    train = _subset_indices(len(full.train_labels), max_train_samples, seed)
    test = _subset_indices(len(full.test_labels), max_test_samples, seed)
    return ImageSplits(
        name=full.name,
        train_images=full.train_images[train],
        train_labels=full.train_labels[train],
        test_images=full.test_images[test],
        test_labels=full.test_labels[test],
        num_labels=full.num_labels,
        label_names=full.label_names,
    )


# ---------------------------------------------------------------- building splits from tables


def _build_splits(
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
    tr = _subset_indices(_num_rows(train), max_train_samples, seed)
    te = _subset_indices(_num_rows(test), max_test_samples, seed)
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


def _subset_indices(n: int, k: int | None, seed: int) -> np.ndarray:
    """All rows, or k rows chosen with the seed, kept in their original order."""
    if k is None or k >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def _num_rows(table: Table) -> int:
    return len(next(iter(table.values()))) if table else 0


def _as_text(value: Any, name: str, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(
            "data.text_key", f"column {key!r} of {name} holds a non-text value: {value!r}"
        )
    return value


# ---------------------------------------------------------------- reading tables


def _records_to_table(records: list[dict[str, Any]]) -> Table:
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    return {c: [r.get(c) for r in records] for c in columns}


def _read_jsonl(path: Path) -> Table:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return _records_to_table(records)


def _read_json(path: Path) -> Table:
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    if isinstance(obj, list) and all(isinstance(r, dict) for r in obj):
        return _records_to_table(obj)
    if isinstance(obj, dict) and all(isinstance(v, list) for v in obj.values()):
        return {str(k): list(v) for k, v in obj.items()}
    raise ConfigError(
        "data.name", f"{path}: a .json file must hold a list of objects or a dict of columns"
    )


def _read_frame(path: Path, reader: str) -> Table:
    import pandas as pd  # a dependency of `datasets`; imported late to keep startup fast

    frame = pd.read_csv(path) if reader == "csv" else pd.read_parquet(path)
    return {str(c): frame[c].tolist() for c in frame.columns}


def _read_table(path: Path) -> Table:
    name = path.name
    try:
        if name.endswith((".jsonl", ".jsonl.gz")):
            return _read_jsonl(path)
        if name.endswith(".json"):
            return _read_json(path)
        return _read_frame(path, "csv" if name.endswith(".csv") else "parquet")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError("data.name", f"cannot read {path}: {exc}") from exc


def _looks_like_path(name: str) -> bool:
    return name.endswith(LOCAL_EXTENSIONS) or "/" in name or "\\" in name or Path(name).is_dir()


def _split_file_in_folder(folder: Path, split: str) -> Path | None:
    found = [
        folder / f"{split}{ext}" for ext in LOCAL_EXTENSIONS if (folder / f"{split}{ext}").is_file()
    ]
    return found[0] if found else None


def _load_local(
    name: str, *, train_split: str, test_split: str, seed: int, **opts: Any
) -> TextSplits:
    path = Path(name).expanduser()
    if not path.exists():
        raise ConfigError("data.name", f"no such file or directory: {str(path)!r}")
    if path.is_dir():
        train_file = _split_file_in_folder(path, train_split)
        if train_file is None:
            exts = "/".join(e.lstrip(".") for e in LOCAL_EXTENSIONS)
            raise ConfigError(
                "data.train_split", f"no {train_split}.{{{exts}}} file in folder {str(path)!r}"
            )
        test_file = _split_file_in_folder(path, test_split)
        train = _read_table(train_file)
        test = _read_table(test_file) if test_file is not None else None
    elif not path.name.endswith(LOCAL_EXTENSIONS):
        raise ConfigError(
            "data.name",
            f"{str(path)!r}: unsupported file type; use .csv, .jsonl, .jsonl.gz, .json or .parquet",
        )
    else:
        train, test = _read_table(path), None
    if test is None:
        train, test = _split_train_test(train, seed)
    return _build_splits(str(path), train, test, seed=seed, **opts)


def _split_train_test(table: Table, seed: int) -> tuple[Table, Table]:
    """Seeded 80/20 split of one table; both parts keep the original row order."""
    n = _num_rows(table)
    if n < 2:
        raise ConfigError(
            "data.name", f"cannot split {n} row(s) into train and test; give more data"
        )
    n_test = max(1, round(TEST_FRACTION * n))
    test_rows = set(np.random.default_rng(seed).permutation(n)[:n_test].tolist())
    train_idx = [i for i in range(n) if i not in test_rows]
    test_idx = sorted(test_rows)
    return (
        {c: [v[i] for i in train_idx] for c, v in table.items()},
        {c: [v[i] for i in test_idx] for c, v in table.items()},
    )


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
    return _build_splits(
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
        return _build_splits(
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
        return _read_jsonl(path)


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
