"""The splitter: head -> body -> tail reproduces the unsplit model, for BERT (both poolings) and ViT."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
)

from engine.errors import ConfigError
from engine.models import TINY_MODELS
from engine.pooling import use_mean_pooling
from engine.split.model import SplitSpec, check_split, param_groups, set_trainable, split_model


def _bert(layers: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = BertConfig(
        num_hidden_layers=layers,
        hidden_size=64,
        num_attention_heads=2,
        intermediate_size=128,
        vocab_size=100,
        max_position_embeddings=40,
        num_labels=3,
    )
    return BertForSequenceClassification(cfg).eval()


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return TINY_MODELS.get("tiny-vit-random")("classification", 10, 0).eval()  # 4 blocks


def _text_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0  # padded rows: the mask must reach every split block
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _split_logits(model, spec, batch):
    client, body = split_model(model, spec)
    hidden, mask = client.head(batch)
    return client.tail(body(hidden, mask), mask)


@pytest.mark.parametrize("head,tail", [(0, 0), (1, 1), (2, 1), (0, 3)])
@pytest.mark.parametrize("mean", [False, True])
def test_bert_split_equals_unsplit(head, tail, mean):
    model = _bert()
    if mean:
        assert use_mean_pooling(model)
    batch = _text_batch()
    with torch.no_grad():
        want = model(**batch).logits
        got = _split_logits(model, SplitSpec(head, tail, 0), batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head,tail", [(0, 0), (1, 2)])
def test_vit_split_equals_unsplit(head, tail):
    model = _vit()
    pixels = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(pixel_values=pixels).logits
        got = _split_logits(model, SplitSpec(head, tail, 0), {"pixel_values": pixels})
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_prompts_sit_after_cls_and_change_the_output():
    model = _bert()
    batch = _text_batch()
    client, body = split_model(model, SplitSpec(1, 1, 5))
    hidden, mask = client.head(batch)
    assert hidden.shape == (3, 12 + 5, 64)
    # [CLS] + 5 prompt positions (always attended) + the text's own mask
    assert mask[:, 1:6].eq(1).all()
    assert torch.equal(mask[:, 6:], batch["attention_mask"][:, 1:])
    with torch.no_grad():
        base = model(**batch).logits
        prompted = client.tail(body(hidden, mask), mask)
    assert not torch.allclose(prompted, base, atol=1e-4)


def test_padding_does_not_leak_into_prompted_outputs():
    """A padded row gives the logits it gives alone (the mask covers prompts and padding)."""
    model = _bert()
    client, body = split_model(model, SplitSpec(1, 1, 4))
    batch = _text_batch()
    alone = {
        "input_ids": batch["input_ids"][2:, :4],
        "attention_mask": batch["attention_mask"][2:, :4],
    }
    with torch.no_grad():
        h, m = client.head(batch)
        padded = client.tail(body(h, m), m)[2]
        h1, m1 = client.head(alone)
        single = client.tail(body(h1, m1), m1)[0]
    torch.testing.assert_close(padded, single, atol=1e-5, rtol=1e-5)


def test_trainable_parts():
    client, _ = split_model(_bert(), SplitSpec(1, 1, 4))
    names = {n for n, _ in set_trainable(client, train_head=False, train_tail=True)}
    assert "prompt" in names
    assert any(n.startswith("tail_blocks.0.") for n in names)
    assert "final.classifier.weight" in names
    assert not any(n.startswith(("embeddings.", "head_blocks.")) for n in names)
    names = {n for n, _ in set_trainable(client, train_head=True, train_tail=False)}
    assert any(n.startswith("head_blocks.0.") for n in names)
    assert not any(n.startswith(("tail_blocks.", "final.")) for n in names)


def _group_names(client, encoder_lr):
    names = {id(p): n for n, p in client.named_parameters()}
    return [
        ({names[id(p)] for p in g["params"]}, g.get("lr")) for g in param_groups(client, encoder_lr)
    ]


def test_encoder_lr_puts_the_pretrained_weights_in_a_group_of_their_own():
    client, _ = split_model(_bert(), SplitSpec(1, 1, 4))  # BERT's own pooler: not mean-pooled
    trainable = {n for n, _ in set_trainable(client, train_head=True, train_tail=True)}
    assert _group_names(client, None) == [(trainable, None)]  # one group at the optimizer's rate
    (rest, rest_lr), (encoder, lr) = _group_names(client, 1e-4)
    assert (
        rest == {"prompt", "final.classifier.weight", "final.classifier.bias"} and rest_lr is None
    )
    assert encoder == trainable - rest and lr == 1e-4
    assert {n.split(".")[0] for n in encoder} == {
        "embeddings",
        "head_blocks",
        "tail_blocks",
        "final",
    }
    assert {n for n in encoder if n.startswith("final.")} == {
        "final.pooler.dense.weight",
        "final.pooler.dense.bias",
    }
    # frozen parts are in no group; a client that trains no encoder weight has one group (a
    # zero-block cut whose pooler is the mean)
    set_trainable(client, train_head=False, train_tail=True)
    (_, _), (encoder, _) = _group_names(client, 1e-4)
    assert {n.split(".")[0] for n in encoder} == {"tail_blocks", "final"}
    mean = _bert()
    assert use_mean_pooling(mean)  # the pooler becomes a parameter-free mean
    zero, _ = split_model(mean, SplitSpec(0, 0, 4))
    set_trainable(zero, train_head=False, train_tail=True)
    head = {"prompt", "final.classifier.weight", "final.classifier.bias"}
    assert _group_names(zero, 1e-4) == [(head, None)]


def test_a_vits_final_norm_is_an_encoder_weight():
    client, _ = split_model(_vit(), SplitSpec(0, 1, 2))
    set_trainable(client, train_head=False, train_tail=True)
    (rest, _), (encoder, _) = _group_names(client, 1e-4)
    assert rest == {"prompt", "final.classifier.weight", "final.classifier.bias"}
    assert {"final.layernorm.weight", "final.layernorm.bias"} <= encoder


def test_bad_splits_name_the_key():
    model = _bert()
    with pytest.raises(ConfigError, match="split.head_layers"):
        check_split(model, SplitSpec(2, 2, 0), 16)
    with pytest.raises(ConfigError, match="split.prompt_length"):
        check_split(model, SplitSpec(1, 1, 30), 16)  # 30 + 16 > 40 positions
    check_split(model, SplitSpec(1, 1, 24), 16)  # exactly the budget is fine


def test_a_vit_of_another_size_takes_28px_grayscale():
    """A pretrained ViT expects e.g. 3 x 224 x 224: load_model's hook resizes and repeats channels."""
    from transformers import ViTConfig, ViTForImageClassification

    from engine.models import fit_images

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64,
                    num_hidden_layers=3, num_attention_heads=2, intermediate_size=128, num_labels=4)  # fmt: skip
    model = ViTForImageClassification(cfg).eval()
    fit_images(model)
    gray = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    rgb = torch.nn.functional.interpolate(
        gray.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear"
    )
    with torch.no_grad():
        want = model(pixel_values=rgb).logits
        got = model(pixel_values=gray).logits
        split = _split_logits(model, SplitSpec(1, 1, 0), {"pixel_values": gray})
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(split, want, atol=1e-5, rtol=1e-5)
