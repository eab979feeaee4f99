"""Turn a validated config into plain run inputs; every user error surfaces here, before Ray starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.algorithms import Algorithm, get_algorithm, supporting
from engine.clock import DeviceProfile, assign_profiles, load_device_profile
from engine.config import RunConfig
from engine.data.batching import Encoded, Pixels, encode, take
from engine.data.partition import label_histograms, make_partition
from engine.data.sources import (
    ImageSplits,
    TextSplits,
    image_datasets,
    load_image_dataset,
    load_text_dataset,
)
from engine.errors import ConfigError
from engine.evalsets import EvalSets, eval_sets
from engine.methods import get_method
from engine.model_check import check_model, check_token_ids, client_model_name
from engine.models import check_model_loadable, is_image_model, load_tokenizer
from engine.strategies import resolve
from engine.train import TrainSpec, derive_seed

VALIDATION_STREAM = 8  # seed stream of the held-out validation rows


@dataclass
class Prepared:
    splits: TextSplits | ImageSplits
    train: Encoded | Pixels
    test: Encoded | Pixels
    # what the workers evaluate: `test`, then the validation rows under eval.select: validation
    evals: EvalSets
    parts: list[np.ndarray]  # row indices per client
    histograms: list[list[int]]
    profile: DeviceProfile
    profiles: list[DeviceProfile]  # per client (devices.mix), else [profile] * num_clients
    train_spec: TrainSpec
    lr: float
    pad_id: int
    vocab_size: int
    public: Encoded | Pixels | None = None  # FedPT's server-side text (rows public_rows)
    public_rows: np.ndarray | None = None
    # train rows no client holds (data.validation_fraction); `test` is these rows with eval.split: validation
    validation_rows: np.ndarray | None = None


def _encode_splits(cfg: RunConfig, splits, tok) -> tuple[Encoded | Pixels, Encoded | Pixels]:
    if isinstance(splits, ImageSplits):
        return (
            Pixels(splits.train_images, splits.train_labels),
            Pixels(splits.test_images, splits.test_labels),
        )
    n = cfg.model.max_length
    return (
        encode(splits.train_texts, splits.train_labels, tok, n),
        encode(splits.test_texts, splits.test_labels, tok, n),
    )


def _load_splits(cfg: RunConfig) -> tuple[TextSplits | ImageSplits, Any]:
    """The data set's splits and the tokenizer that encodes them (None for images)."""
    d = cfg.data
    image_model = is_image_model(cfg.model.name)
    if d.name in image_datasets():
        if cfg.model.task != "classification":
            raise ConfigError("model.task", f"{d.name} is an image data set; use classification")
        if not image_model:
            raise ConfigError(
                "model.name", f"{d.name} holds images; use an image model such as tiny-vit-random"
            )
        images = load_image_dataset(
            d.name,
            max_train_samples=d.max_train_samples,
            max_test_samples=d.max_test_samples,
            seed=cfg.seed,
        )
        return images, None
    if image_model:
        raise ConfigError("model.name", f"{cfg.model.name} classifies images; {d.name} holds text")
    if cfg.model.task == "classification" and d.label_key is None:
        raise ConfigError(
            "data.label_key", "classification needs a label column; set data.label_key"
        )
    splits = load_text_dataset(
        d.name,
        text_key=d.text_key,
        label_key=d.label_key if cfg.model.task == "classification" else None,
        group_key=d.group_key,
        train_split=d.train_split,
        test_split=d.test_split,
        max_train_samples=d.max_train_samples,
        max_test_samples=d.max_test_samples,
        seed=cfg.seed,
    )
    return splits, load_tokenizer(cfg.model.name)


def prepare(cfg: RunConfig) -> Prepared:
    check_model_loadable(cfg.model.name)
    alg = _check_algorithm(cfg)
    splits, tok = _load_splits(cfg)
    if cfg.model.task == "classification" and splits.num_labels < 2:
        raise ConfigError(
            "data.label_key", f"{cfg.data.name} has {splits.num_labels} label(s); need >= 2"
        )
    profile = load_device_profile(cfg.resources.device_profile)
    fed = cfg.federation
    if fed.num_clients > len(splits.train_labels):  # before anything is sized by the client count
        raise ConfigError(
            "federation.num_clients",
            f"{fed.num_clients} clients > {len(splits.train_labels)} training rows; use fewer clients",
        )
    profiles = assign_profiles(
        cfg.devices.mix, cfg.resources.device_profile, fed.num_clients, cfg.seed
    )
    parts, public_rows, validation_rows = _client_parts(cfg, splits, alg)
    pad_id = int(tok.pad_token_id) if tok is not None else 0
    vocab_size = len(tok) if tok is not None else 0
    rows = check_model(cfg, splits.num_labels, vocab_size, pad_id)  # before any text is encoded
    train, test = _encode_splits(cfg, splits, tok)
    if cfg.eval.split == "validation":
        test = take(train, validation_rows)
    selecting = cfg.eval.select == "validation"
    evals = eval_sets(test, take(train, validation_rows) if selecting else None)
    if isinstance(train, Encoded):
        largest = max((int(e.ids.max()) for e in (train, test) if len(e.ids)), default=0)
        check_token_ids(client_model_name(cfg), largest, rows)
    spec = _train_spec(cfg, alg, pad_id)
    public = train
    if alg.public_text and cfg.fedpt.public_split != "public":
        public, public_rows = _named_public_split(cfg, tok)
    return Prepared(
        public=public,
        public_rows=public_rows,
        splits=splits,
        train=train,
        test=test,
        evals=evals,
        parts=parts,
        histograms=label_histograms(parts, splits.train_labels, max(splits.num_labels, 1)),
        profile=profile,
        profiles=profiles,
        train_spec=spec,
        lr=spec.lr,
        pad_id=pad_id,
        vocab_size=vocab_size,
        validation_rows=validation_rows,
    )


def _check_algorithm(cfg: RunConfig) -> Algorithm:
    """The run's algorithm, after its own checks and those of what it does not compose with."""
    alg = get_algorithm(cfg.algorithm)
    alg.check(cfg)
    if cfg.privacy.dp and not alg.dp:
        raise ConfigError(
            "privacy.dp",
            f"client-level DP applies to algorithm: {', '.join(supporting('dp'))}, not {cfg.algorithm}",
        )
    if cfg.federation.deadline_policy == "partial" and not alg.partial_work:
        raise ConfigError(
            "federation.deadline_policy",
            f"partial work applies to {', '.join(supporting('partial_work'))}, not "
            f"{cfg.algorithm}; use drop",
        )
    kill = cfg.faults.server_kill_round
    if kill is not None and not alg.server_faults:
        raise ConfigError(
            "faults.server_kill_round",
            f"{cfg.algorithm} runs no server to kill (only {', '.join(supporting('server_faults'))} "
            "do); remove it",
        )
    if kill is not None and kill > cfg.federation.rounds:
        raise ConfigError(
            "faults.server_kill_round",
            f"round {kill} > federation.rounds ({cfg.federation.rounds}): the fault would never "
            "happen; pick a round of the run",
        )
    return alg


def _client_parts(
    cfg: RunConfig, splits, alg: Algorithm
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Each client's train rows, the public rows the algorithm's server keeps (FedPT: a seeded share
    of the train split that no client holds) and the validation rows (data.validation_fraction,
    drawn first, so the public share never changes them); every client must get data."""
    d, n = cfg.data, len(splits.train_labels)
    validation_rows = held_out_rows(n, d.validation_fraction, cfg.seed)
    rest = np.setdiff1d(np.arange(n), validation_rows)
    public_rows = np.zeros(0, dtype=np.int64)
    if alg.public_text and cfg.fedpt.public_split == "public":
        k = max(1, round(cfg.fedpt.public_fraction * n))
        if k >= len(rest):
            raise ConfigError(
                "fedpt.public_fraction",
                f"{k} public rows leave no training row for the clients; lower it (or "
                "data.validation_fraction)",
            )
        picked = np.random.default_rng(cfg.seed).choice(len(rest), size=k, replace=False)
        public_rows = np.sort(rest[picked])
    client_rows = np.setdiff1d(rest, public_rows)
    if cfg.federation.num_clients > len(client_rows) and len(validation_rows):
        raise ConfigError(
            "data.validation_fraction",
            f"{len(validation_rows)} held-out rows leave {len(client_rows)} for "
            f"{cfg.federation.num_clients} clients; hold out fewer rows or use fewer clients",
        )
    groups = getattr(splits, "train_groups", None)
    parts = make_partition(
        d.partition.kind,
        labels=splits.train_labels[client_rows],
        groups=[groups[i] for i in client_rows] if groups is not None else None,
        num_clients=cfg.federation.num_clients,
        alpha=d.partition.alpha,
        seed=cfg.seed,
    )
    parts = [client_rows[p] for p in parts]
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        fewer = (
            " (or hold out fewer rows: data.validation_fraction)" if len(validation_rows) else ""
        )
        raise ConfigError(
            "federation.num_clients", f"clients {empty[:5]} get no data; use fewer clients{fewer}"
        )
    return parts, public_rows, validation_rows


def held_out_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """round(fraction * n) rows (at least one when fraction > 0), sorted, drawn on their own seed
    stream: the same rows for a seed whatever else the config changes."""
    if fraction == 0:
        return np.zeros(0, dtype=np.int64)
    k = max(1, round(fraction * n))
    if k >= n:
        raise ConfigError(
            "data.validation_fraction",
            f"{k} of {n} training rows held out leaves none for the clients; lower it",
        )
    rng = np.random.default_rng(derive_seed(seed, VALIDATION_STREAM))
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def _train_spec(cfg: RunConfig, alg: Algorithm, pad_id: int) -> TrainSpec:
    """How clients train: the train section, the learning rate (train.lr, else the method's, else
    the algorithm's own when the method section does not apply) and the strategy's proximal term."""
    t = cfg.train
    if alg.uses_method:
        lr = t.lr or cfg.method.lr or get_method(cfg.method.name).default_lr
    else:  # e.g. SFPrompt: prompts, head and tail train at the algorithm's own rate
        lr = t.lr or alg.default_lr
    strategy, params = resolve(cfg.federation.strategy, cfg.strategy.model_dump())
    return TrainSpec(
        batch_size=t.batch_size,
        epochs=t.local_epochs,
        steps=t.local_steps,
        lr=lr,
        optimizer=t.optimizer,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        group_by_length=t.group_by_length,
        task=cfg.model.task,
        pad_id=pad_id,
        prox_mu=params["mu"] if strategy.proximal else 0.0,
    )


def _named_public_split(cfg: RunConfig, tok) -> tuple[Encoded, np.ndarray]:
    """FedPT's public text from another split of the data set (fedpt.public_split)."""
    d = cfg.data
    try:
        other = load_text_dataset(
            d.name,
            text_key=d.text_key,
            label_key=None,
            group_key=None,
            train_split=cfg.fedpt.public_split,
            test_split=d.test_split,
            seed=cfg.seed,
        )
    except ConfigError as exc:
        raise ConfigError(
            "fedpt.public_split",
            f"{d.name} has no split {cfg.fedpt.public_split!r} ({exc.message}); "
            "use public (a held-out share of train) or an existing split",
        ) from None
    enc = encode(other.train_texts, other.train_labels, tok, cfg.model.max_length)
    return enc, np.arange(len(enc))


def eval_shards(batches: list[np.ndarray], num_shards: int) -> list[list[np.ndarray]]:
    """Eval batches dealt round-robin into shards (batch i goes to shard i % num_shards)."""
    return [batches[i::num_shards] for i in range(num_shards) if batches[i::num_shards]]


def unshard(results: list[list[dict]]) -> list[dict]:
    """Per-batch results back in batch order from round-robin shards."""
    n = sum(len(r) for r in results)
    return [results[i % len(results)][i // len(results)] for i in range(n)]
