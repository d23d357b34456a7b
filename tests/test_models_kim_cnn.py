"""Kim's sentence CNN against a slow float64 loop over positions (reference) and the paper's parameter formula."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from convatlas.models import create_model, model_info
from convatlas.models.kim_cnn import KimCNN
from helpers import check_against

MR_VOCAB = 18_765  # Kim 2014, Table 1: |V| of the MR (movie review) set


def _formula(vocab: int, d: int, classes: int, windows=(3, 4, 5), maps=100, copies: int = 1) -> int:
    return copies * vocab * d + sum(h * d * maps + maps for h in windows) + (len(windows) * maps + 1) * classes


@pytest.mark.parametrize("mode", ["rand", "static", "non-static", "multichannel"])
def test_parameter_count_by_formula(mode):
    with torch.device("meta"):
        if mode == "rand":
            model = create_model("kim_cnn", mode=mode, vocab_size=MR_VOCAB)
        else:
            model = create_model("kim_cnn", mode=mode, embedding=torch.zeros(MR_VOCAB, 300, device="meta"))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == _formula(MR_VOCAB, 300, 2, copies=2 if mode == "multichannel" else 1)
    assert total == {"multichannel": 11_619_902}.get(mode, 5_990_402)
    assert trainable == (_formula(0, 300, 2) if mode == "static" else _formula(MR_VOCAB, 300, 2))  # 360,902 static


def _slow_reference(model: KimCNN, tokens: torch.Tensor, params: dict) -> torch.Tensor:
    """Kim's equations with explicit loops: c_i = ReLU(sum_channels w . x_{i:i+h-1} + b), max over i, then softmax
    layer; sentences padded with max(h) - 1 zero vectors on each side."""
    pad = max(model.windows) - 1
    channels = [params["embed.weight"]]
    if model.mode == "multichannel":
        channels.append(model.static_embed.weight)
    # The padding word (id 0) is a constant zero vector: no gradient reaches that row.
    channels = [torch.cat([torch.zeros_like(e[:1]), e[1:]]) for e in channels]
    n, t = tokens.shape
    outs = []
    for s in range(n):
        rows = [torch.cat([torch.zeros(pad, model.embed_dim, dtype=e.dtype), e[tokens[s]], torch.zeros(
            pad, model.embed_dim, dtype=e.dtype)]) for e in channels]  # fmt: skip
        z = []
        for k, h in enumerate(model.windows):
            w, b = params[f"convs.{k}.weight"], params[f"convs.{k}.bias"]  # (m, d, h), (m,)
            c = []
            for i in range(t + 2 * pad - h + 1):
                total = b + sum((w * x[i : i + h].T).sum(dim=(1, 2)) for x in rows)
                c.append(torch.relu(total))
            z.append(torch.stack(c).amax(dim=0))
        outs.append(params["fc.weight"] @ torch.cat(z) + params["fc.bias"])
    return torch.stack(outs)


@pytest.mark.parametrize("mode", ["non-static", "multichannel"])
def test_matches_slow_float64_loop(mode):
    torch.set_default_dtype(torch.float64)
    try:
        model = KimCNN(embedding=torch.randn(20, 6), mode=mode, windows=(2, 3), maps=4, num_classes=3).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    tokens = torch.tensor([[3, 7, 0, 19, 5], [1, 1, 2, 0, 0]])
    names = ["embed.weight", "convs.0.weight", "convs.0.bias", "convs.1.weight", "convs.1.bias", "fc.weight", "fc.bias"]
    values = [model.get_parameter(n).detach().clone().requires_grad_() for n in names]

    def ours(*vals):
        return functional_call(model, dict(zip(names, vals, strict=True)), (tokens,))

    def reference(*vals):
        return _slow_reference(model, tokens, dict(zip(names, vals, strict=True)))

    check_against(ours, reference, values)


def test_short_sentences_are_padded_like_kims_code():
    model = KimCNN(vocab_size=30, embed_dim=8, maps=5).eval()
    one_word = torch.tensor([[7]])  # shorter than every window
    assert model(one_word).shape == (1, 2)
    # Padding by hand with max(windows) - 1 = 4 padding tokens on each side adds nothing new: same features.
    padded = torch.tensor([[0, 0, 0, 0, 7, 0, 0, 0, 0]])
    torch.testing.assert_close(model.features(one_word), model.features(padded))


def test_static_and_multichannel_freeze_the_right_vectors():
    vectors = torch.randn(12, 4)
    tokens = torch.randint(1, 12, (6, 7))
    for mode in ("static", "non-static", "multichannel"):
        model = KimCNN(embedding=vectors, mode=mode, windows=(2,), maps=3)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        model(tokens).logsumexp(1).sum().backward()
        opt.step()
        tuned_changed = not torch.equal(model.embed.weight[1:], vectors[1:])
        assert tuned_changed == (mode != "static"), mode
        assert torch.all(model.embed.weight[0] == 0)  # the padding vector is zero and stays zero
        if mode == "multichannel":
            torch.testing.assert_close(model.static_embed.weight[1:], vectors[1:], rtol=0, atol=0)


def test_apply_max_norm_bounds_output_rows():
    model = KimCNN(vocab_size=10, embed_dim=4, maps=2, num_classes=3, max_norm=3.0)
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[3.0, 4.0, 0, 0, 0, 0], [0.3, 0.4, 0, 0, 0, 0], [0, 0, 0, 0, 0, 6.0]]))
    model.apply_max_norm()
    norms = model.fc.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.tensor([3.0, 0.5, 3.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.fc.weight[0, :2], torch.tensor([1.8, 2.4]), atol=1e-5, rtol=0)  # direction kept


def test_learns_a_position_invariant_bigram():
    # Max-over-time pooling should find the bigram (5, 6) wherever it sits in the sentence.
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 40, (256, 12), generator=gen)
    tokens[tokens == 5] = 7
    labels = torch.randint(0, 2, (256,), generator=gen)
    where = torch.randint(0, 11, (256,), generator=gen)
    for i in torch.nonzero(labels).flatten():
        tokens[i, where[i]], tokens[i, where[i] + 1] = 5, 6
    model = KimCNN(vocab_size=40, embed_dim=16, windows=(2, 3), maps=8, mode="rand")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(tokens[:192]), labels[:192]).backward()
        opt.step()
        model.apply_max_norm()
    model.eval()
    accuracy = (model(tokens[192:]).argmax(1) == labels[192:]).float().mean()
    assert accuracy >= 0.95


def test_registered_as_text_model_and_traceable():
    info = model_info("kim_cnn")
    assert info.task == "text" and info.input_size == (64,)
    model = create_model("kim_cnn", vocab_size=100, mode="multichannel", embedding=torch.randn(100, 300)).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randint(0, 100, (2, 64))
    torch.testing.assert_close(traced(x), model(x))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mode must be one of"):
        KimCNN(mode="dynamic")
    with pytest.raises(ValueError, match="mode='rand'"):
        KimCNN(mode="rand", embedding=torch.randn(5, 3))
    with pytest.raises(ValueError, match="vocab_size=6 but the embedding has 5 rows"):
        KimCNN(vocab_size=6, embedding=torch.randn(5, 3))
    with pytest.raises(ValueError, match="embed_dim=4 but the embedding has 3 columns"):
        KimCNN(embed_dim=4, embedding=torch.randn(5, 3))
    with pytest.raises(TypeError, match="floating-point"):
        KimCNN(embedding=torch.ones(5, 3, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"KimCNN: padding_idx must satisfy 0 <= padding_idx <= 4 \(vocab_size=5\), got 5"
    ):
        KimCNN(vocab_size=5, padding_idx=5)
    with pytest.raises(ValueError, match=r"KimCNN: windows\[1\] must satisfy 1 <= windows\[1\] <= 16384, got 0"):
        KimCNN(vocab_size=5, windows=(3, 0))
    with pytest.raises(ValueError, match="unknown keyword 'window'"):
        create_model("kim_cnn", window=(3,))
