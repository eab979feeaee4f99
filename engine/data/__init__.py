"""Data: the dataset registry (sources) and the client partitioners (partition)."""

from __future__ import annotations

from engine.data.partition import (
    dirichlet_counts,
    label_histograms,
    make_partition,
    partition_dirichlet,
    partition_iid,
    partition_natural,
)
from engine.data.sources import (
    ImageSplits,
    TextSplits,
    embedded_datasets,
    load_image_dataset,
    load_text_dataset,
    register_dataset,
)

__all__ = [
    "ImageSplits",
    "TextSplits",
    "dirichlet_counts",
    "embedded_datasets",
    "label_histograms",
    "load_image_dataset",
    "load_text_dataset",
    "make_partition",
    "partition_dirichlet",
    "partition_iid",
    "partition_natural",
    "register_dataset",
]
