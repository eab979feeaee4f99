"""Tests for the dataset registry: embedded sets, local files, hub errors and label mapping."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from engine.data import sources
from engine.data.sources import (
    embedded_datasets,
    load_image_dataset,
    load_text_dataset,
    register_dataset,
)
from engine.errors import ConfigError

FORTUNE_TRAIN_COUNTS = [790, 856, 999, 543, 1028, 570, 506, 496]  # from data/README.md
AUSTEN_TRAIN_PER_BOOK = {
    "emma": 2199,
    "mansfieldpark": 1700,
    "northangerabbey": 967,
    "persuasion": 955,
    "prideprejudice": 1954,
    "sensesensibility": 1719,
}


def test_data_folder_is_the_projects_own():
    assert sources.DATA_DIR.parent.joinpath("engine", "data", "sources.py").is_file()
    assert "shared" not in sources.DATA_DIR.parts


def test_embedded_names():
    assert embedded_datasets() == ["amazon_reviews", "austen", "fortunes"]


def test_amazon_reviews_rows_labels_and_balance():
    s = load_text_dataset("amazon_reviews")
    assert (len(s.train_texts), len(s.test_texts)) == (3972, 1000)
    assert s.label_names == ["other", "great"] and s.num_labels == 2
    assert s.train_labels.dtype == np.int64
    assert np.bincount(s.train_labels).tolist() == [1391, 2581]
    assert np.bincount(s.test_labels).tolist() == [342, 658]
    assert s.train_groups is None
    assert all(isinstance(t, str) and t for t in s.train_texts[:50])


def test_fortunes_rows_categories_and_natural_group():
    s = load_text_dataset("fortunes")
    assert (len(s.train_texts), len(s.test_texts)) == (5788, 1019)
    assert s.label_names == sources.FORTUNE_CATEGORIES and s.num_labels == 8
    assert np.bincount(s.train_labels).tolist() == FORTUNE_TRAIN_COUNTS
    # The natural group is the category, which is exactly the label's name.
    assert s.train_groups == [s.label_names[i] for i in s.train_labels]


def test_austen_is_unlabeled_with_book_groups():
    s = load_text_dataset("austen")
    assert (len(s.train_texts), len(s.test_texts)) == (9494, 499)
    assert s.num_labels == 0 and s.label_names == []
    assert (s.train_labels == -1).all() and (s.test_labels == -1).all()
    counts = {b: s.train_groups.count(b) for b in set(s.train_groups)}
    assert counts == AUSTEN_TRAIN_PER_BOOK


def test_austen_book_as_string_label():
    s = load_text_dataset("austen", label_key="book")
    assert s.label_names == sorted(AUSTEN_TRAIN_PER_BOOK)
    assert np.bincount(s.train_labels).tolist() == [AUSTEN_TRAIN_PER_BOOK[b] for b in s.label_names]


def test_max_samples_is_a_deterministic_ordered_subset():
    full = load_text_dataset("fortunes")
    a = load_text_dataset("fortunes", max_train_samples=100, max_test_samples=30, seed=3)
    b = load_text_dataset("fortunes", max_train_samples=100, max_test_samples=30, seed=3)
    c = load_text_dataset("fortunes", max_train_samples=100, max_test_samples=30, seed=4)
    assert len(a.train_texts) == 100 and len(a.test_texts) == 30
    assert a.train_texts == b.train_texts and (a.train_labels == b.train_labels).all()
    assert a.train_texts != c.train_texts
    expected = np.sort(np.random.default_rng(3).choice(5788, size=100, replace=False))
    assert a.train_texts == [full.train_texts[i] for i in expected]
    assert (a.train_labels == full.train_labels[expected]).all()
    assert a.train_groups == [full.train_groups[i] for i in expected]
    assert a.label_names == full.label_names  # subsetting never renumbers labels


def test_fashion_mnist_images():
    s = load_image_dataset("fashion_mnist")
    assert s.train_images.shape == (12000, 28, 28) and s.train_images.dtype == np.uint8
    assert s.test_images.shape == (2000, 28, 28)
    assert s.train_labels.dtype == np.int64
    assert np.bincount(s.train_labels).tolist() == [1200] * 10
    assert np.bincount(s.test_labels).tolist() == [200] * 10
    assert (
        s.num_labels == 10
        and s.label_names[0] == "T-shirt/top"
        and s.label_names[9] == "Ankle boot"
    )
    small = load_image_dataset("fashion_mnist", max_train_samples=50, seed=1)
    idx = np.sort(np.random.default_rng(1).choice(12000, size=50, replace=False))
    assert (small.train_images == s.train_images[idx]).all()
    with pytest.raises(ConfigError) as err:
        load_image_dataset("cifar10")
    assert err.value.key == "data.name"


def _write_jsonl(path, rows, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_local_csv_with_custom_columns_and_string_labels(tmp_path):
    path = tmp_path / "reviews.csv"
    rows = [(f"text number {i}", ["pos", "neg", "neutral"][i % 3]) for i in range(20)]
    path.write_text("body,stars\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
    s = load_text_dataset(str(path), text_key="body", label_key="stars", seed=5)
    assert s.label_names == ["neg", "neutral", "pos"]
    assert (len(s.train_texts), len(s.test_texts)) == (16, 4)  # 80/20 split of 20 rows
    assert sorted(s.train_texts + s.test_texts) == sorted(t for t, _ in rows)
    by_text = dict(rows)
    for text, label in zip(
        s.train_texts + s.test_texts, np.concatenate([s.train_labels, s.test_labels]), strict=True
    ):
        assert s.label_names[label] == by_text[text]
    # The split keeps the file order and follows the seed.
    order = [t for t, _ in rows]
    assert s.train_texts == sorted(s.train_texts, key=order.index)
    test_rows = np.sort(np.random.default_rng(5).permutation(20)[:4])
    assert s.test_texts == [order[i] for i in test_rows]
    assert (
        load_text_dataset(str(path), text_key="body", label_key="stars", seed=6).test_texts
        != s.test_texts
    )


def test_local_folder_of_jsonl_splits_with_int_labels_and_groups(tmp_path):
    _write_jsonl(
        tmp_path / "train.jsonl",
        [{"sentence": f"s{i}", "y": i % 4, "site": f"site{i % 2}"} for i in range(12)],
    )
    _write_jsonl(
        tmp_path / "dev.jsonl.gz", [{"sentence": "d0", "y": 3}, {"sentence": "d1", "y": 0}], gz=True
    )
    s = load_text_dataset(
        str(tmp_path), text_key="sentence", label_key="y", group_key="site", test_split="dev"
    )
    assert s.train_texts == [f"s{i}" for i in range(12)]
    assert s.train_labels.tolist() == [i % 4 for i in range(12)]
    assert s.test_texts == ["d0", "d1"] and s.test_labels.tolist() == [3, 0]
    assert s.label_names == ["0", "1", "2", "3"] and s.num_labels == 4
    assert s.train_groups == [f"site{i % 2}" for i in range(12)]


def test_unlabeled_local_text(tmp_path):
    path = tmp_path / "corpus.jsonl"
    _write_jsonl(path, [{"text": f"line {i}"} for i in range(10)])
    s = load_text_dataset(str(path), label_key=None)
    assert s.num_labels == 0 and (s.train_labels == -1).all() and len(s.train_texts) == 8


def test_json_file_of_records(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"text": f"t{i}", "label": i % 2} for i in range(10)]))
    s = load_text_dataset(str(path))
    assert len(s.train_texts) + len(s.test_texts) == 10 and s.num_labels == 2


def test_unknown_name_error():
    with pytest.raises(ConfigError) as err:
        load_text_dataset("sst9")
    assert err.value.key == "data.name"
    assert "unknown dataset 'sst9'" in str(err.value) and "amazon_reviews" in str(err.value)
    assert "hf:<name>" in str(err.value)


def test_missing_column_error_names_the_key_and_columns():
    with pytest.raises(ConfigError) as err:
        load_text_dataset("amazon_reviews", text_key="body")
    assert err.value.key == "data.text_key"
    assert err.value.message == "column 'body' not in amazon_reviews (columns: text, label)"
    with pytest.raises(ConfigError) as err:
        load_text_dataset("fortunes", label_key="stars")
    assert err.value.key == "data.label_key"
    with pytest.raises(ConfigError) as err:
        load_text_dataset("amazon_reviews", group_key="product")
    assert err.value.key == "data.group_key"


def test_missing_file_and_split_errors(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_text_dataset(str(tmp_path / "nope.csv"))
    assert err.value.key == "data.name" and "nope.csv" in err.value.message
    with pytest.raises(ConfigError) as err:
        load_text_dataset(str(tmp_path))  # an empty folder: no train file
    assert err.value.key == "data.train_split"
    with pytest.raises(ConfigError) as err:
        load_text_dataset("amazon_reviews", test_split="validation")
    assert err.value.key == "data.test_split"


def test_bad_labels_are_config_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    _write_jsonl(path, [{"text": "a", "label": 0.5}, {"text": "b", "label": 1}])
    with pytest.raises(ConfigError) as err:
        load_text_dataset(str(path))
    assert err.value.key == "data.label_key"


def test_hub_dataset_unreachable_is_a_config_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fail at once, no retries
    with pytest.raises(ConfigError) as err:
        load_text_dataset("hf:glue:sst2")
    assert err.value.key == "data.name"
    assert "glue" in err.value.message and "sst2" in err.value.message
    with pytest.raises(ConfigError):
        load_text_dataset("hf:")


def test_hub_dataset_conversion_through_load_dataset(monkeypatch):
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    fake = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"sentence": ["a", "b", "c"], "label": [1, 0, 1]}, features=features
            ),
            "validation": datasets.Dataset.from_dict(
                {"sentence": ["d"], "label": [0]}, features=features
            ),
        }
    )
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a: calls.append(a) or fake)
    s = load_text_dataset("hf:glue:sst2", text_key="sentence", test_split="validation")
    assert calls == [("glue", "sst2")]
    assert s.train_texts == ["a", "b", "c"] and s.train_labels.tolist() == [1, 0, 1]
    assert s.test_texts == ["d"] and s.label_names == ["neg", "pos"]
    with pytest.raises(ConfigError) as err:
        load_text_dataset("hf:glue:sst2", text_key="sentence")  # no "test" split
    assert err.value.key == "data.test_split"


def test_register_dataset_rejects_duplicates():
    with pytest.raises(ValueError):
        register_dataset("fortunes", lambda **kw: None)
