"""The sentence encoders of convatlas.models.lightconv (LightConv, DynamicConv and the self-attention baseline).

References: torch.nn.MultiheadAttention for the attention mixer (same weights), the definition of right padding
(appending padding tokens must not change the logits) and Kim's max-norm rule.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convatlas.models import create_model, list_models
from convatlas.models.lightconv import SelfAttention

NAMES = ("lightconv_classifier", "dynamicconv_classifier", "attention_classifier")


def test_registered_as_text_models():
    assert set(NAMES) <= set(list_models(task="text"))


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_every_parameter_learns(name):
    model = create_model(name, vocab_size=30, num_classes=3, dim=16, heads=2, depth=2, kernel_size=3)
    tokens = torch.randint(1, 30, (4, 9))
    tokens[1, 5:] = 0
    out = model(tokens)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        if not pname.startswith("embed"):
            assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_right_padding_does_not_change_logits(name):
    model = create_model(name, vocab_size=30, dim=16, heads=2, depth=2, kernel_size=5).double().eval()
    tokens = torch.randint(1, 30, (3, 7))
    padded = torch.cat([tokens, torch.zeros(3, 6, dtype=torch.int64)], dim=1)
    torch.testing.assert_close(model(padded), model(tokens))


def test_self_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = SelfAttention(12, heads=3).double().eval()
    ref = nn.MultiheadAttention(12, 3, batch_first=True).double().eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(2, 6, 12, dtype=torch.float64)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 4:] = True
    expected, _ = ref(x, x, x, key_padding_mask=mask, need_weights=False)
    torch.testing.assert_close(ours(x, mask), expected)


def test_pretrained_embedding_and_freezing():
    emb = torch.randn(30, 50)
    model = create_model("lightconv_classifier", vocab_size=30, embedding=emb, freeze_embedding=True)
    torch.testing.assert_close(model.embed.weight.detach(), emb)
    assert not model.embed.weight.requires_grad
    with pytest.raises(
        ValueError, match=r"embedding must be Tensor\[vocab_size, embed_dim\] = \[31, 50\], got \[30, 50\]"
    ):
        create_model("lightconv_classifier", vocab_size=31, embedding=emb)


def test_apply_max_norm_caps_classifier_rows():
    model = create_model("attention_classifier", vocab_size=30, dim=16, heads=2, num_classes=2, max_norm=3.0)
    with torch.no_grad():
        model.head.weight[0].fill_(5.0)  # norm 20
        model.head.weight[1].fill_(0.1)  # norm 0.4
    model.apply_max_norm()
    norms = model.head.weight.norm(dim=1)
    torch.testing.assert_close(norms[0], torch.tensor(3.0))
    torch.testing.assert_close(norms[1], torch.tensor(0.4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown keyword 'kernelsize'"):
        create_model("lightconv_classifier", kernelsize=3)
    with pytest.raises(ValueError, match="SequenceClassifier: dim must be a multiple of heads, got dim=10 and heads=4"):
        create_model("attention_classifier", dim=10)
    with pytest.raises(ValueError, match=r"tokens must be LongTensor\[N, T\]"):
        create_model("lightconv_classifier")(torch.randn(2, 5))


def test_full_size_parameter_count_on_meta():
    with torch.device("meta"):
        conv = create_model("lightconv_classifier", vocab_size=18055)
        att = create_model("attention_classifier", vocab_size=18055)
    n_conv = sum(p.numel() for p in conv.parameters())
    n_att = sum(p.numel() for p in att.parameters())
    # embedding 18055*50 + in_proj 50*64+64; per layer: the mixers differ (GLU 64->128 + 4x7 kernel + 64->64 vs
    # qkv 64->192 + 64->64), the rest is equal: 2 LayerNorms (256) + FFN 64->128->64 (16576)
    common = 18055 * 50 + 50 * 64 + 64 + 2 * (256 + 16576) + 128 + 64 * 2 + 2
    assert n_conv == common + 2 * ((64 * 128 + 128) + 4 * 7 + (64 * 64 + 64))
    assert n_att == common + 2 * ((64 * 192 + 192) + (64 * 64 + 64))
