"""Tiny random models of many architectures, built from configs and saved like a user's checkpoint
(weights + the embedded WordPiece tokenizer), so tests load them by path with no download."""

from __future__ import annotations

import json
from pathlib import Path

import torch

ENCODERS = ["bert", "roberta", "distilbert", "albert", "electra", "deberta-v2", "mpnet",
            "xlm-roberta", "modernbert"]  # fmt: skip
DECODERS = ["llama", "qwen2", "gemma", "gpt2"]
VOCAB = 30522  # the embedded tokenizer's
SIZES = {
    "num_hidden_layers": 3, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 16, "embedding_size": 32, "n_layer": 3, "n_embd": 32,
    "n_head": 2, "vocab_size": VOCAB, "pad_token_id": 0, "global_attn_every_n_layers": 1,
    "max_position_embeddings": 512,
}  # fmt: skip


IMAGES = {"image_size": 28, "patch_size": 7, "num_channels": 1}  # fashion_mnist's 28x28 grayscale


def tiny_config(model_type: str):
    """A three-layer, 32-wide config of `model_type` (the keys it does not have are left out)."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    default = cls()
    return cls(**{k: v for k, v in {**SIZES, **IMAGES}.items() if hasattr(default, k)})


def save_tiny(
    model_type: str, path: Path, mean_pooling: bool = False, seed: int = 0, **config: object
) -> Path:
    """A tiny random `model_type` saved with save_pretrained at `path` (with a tokenizer); with
    mean_pooling, the sentence-transformers declaration of mean pooling (1_Pooling/config.json);
    `config` overrides the tiny config's fields (e.g. vocab_size=1000)."""
    from transformers import AutoModel, AutoTokenizer

    from engine.models import IMAGE_MODEL_TYPES, TINY_TOKENIZER, resolve_model_path

    torch.manual_seed(seed)
    conf = tiny_config(model_type)
    for key, value in config.items():
        setattr(conf, key, value)
    AutoModel.from_config(conf).save_pretrained(path)
    if model_type not in IMAGE_MODEL_TYPES:
        AutoTokenizer.from_pretrained(resolve_model_path(TINY_TOKENIZER)).save_pretrained(path)
    if mean_pooling:
        (path / "1_Pooling").mkdir()
        (path / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
        )
    return path
