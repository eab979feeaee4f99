"""Local data files as tables: reading .jsonl(.gz) / .json / .csv / .parquet into columns, finding a
split's file in a folder, and the seeded train/test split of a single file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError

LOCAL_EXTENSIONS = (".jsonl.gz", ".jsonl", ".json", ".csv", ".parquet")
TEST_FRACTION = 0.2  # a single local file is split 80/20 (seeded)

# A table is its columns, in file order: column name -> one value per row.
Table = dict[str, list[Any]]


def num_rows(table: Table) -> int:
    return len(next(iter(table.values()))) if table else 0


def _records_to_table(records: list[dict[str, Any]]) -> Table:
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    return {c: [r.get(c) for r in records] for c in columns}


def read_jsonl(path: Path) -> Table:
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


def read_table(path: Path) -> Table:
    name = path.name
    try:
        if name.endswith((".jsonl", ".jsonl.gz")):
            return read_jsonl(path)
        if name.endswith(".json"):
            return _read_json(path)
        return _read_frame(path, "csv" if name.endswith(".csv") else "parquet")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError("data.name", f"cannot read {path}: {exc}") from exc


def split_file_in_folder(folder: Path, split: str) -> Path | None:
    found = [
        folder / f"{split}{ext}" for ext in LOCAL_EXTENSIONS if (folder / f"{split}{ext}").is_file()
    ]
    return found[0] if found else None


def split_train_test(table: Table, seed: int) -> tuple[Table, Table]:
    """Seeded 80/20 split of one table; both parts keep the original row order."""
    n = num_rows(table)
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
