"""The one sweep over the whole registry (timm's tests/test_models.py): every registered model, whoever wrote it.

For each image model at a small input: forward shape, no NaN, every parameter receives a finite gradient,
``feature_info`` equals the real maps of ``forward_stages``, torch.fx traces it to the same function (eval and train
mode), torchvision's ``create_feature_extractor`` on the ``feature_info`` modules gives ``forward_stages``,
channels_last gives the same outputs, ``reset_classifier`` works, and the engine's Fashion-MNIST case (1 channel,
28x28) runs. Text models run on token ids and trace too. Detection models (a list of images in, data-dependent
proposals) do not trace; their backbones do. References: the model's own eager forward (fx, feature extractor,
channels_last, torch.compile, ONNX Runtime); the declared ``feature_info`` (shapes).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from convatlas.models import create_model, list_models, model_info, register_model
from convatlas.models.resnext import ResNeXt
from helpers import randomize

IMAGE_MODELS = [n for n in list_models() if model_info(n).task in ("classification", "segmentation")]
TEXT_MODELS = list_models(task="text")
SIDE = 64  # small, divisible by 32: every stage's map is SIDE / reduction
# Models whose architecture needs a larger input than SIDE (the 2015 U-Net loses 184 pixels to valid convolutions).
MIN_SIDE = {"unet": 188}


def _input(name: str, batch: int = 2) -> torch.Tensor:
    channels = model_info(name).input_size[0]
    side = MIN_SIDE.get(name, SIDE)
    return torch.randn(batch, channels, side, side)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_forward_backward_and_feature_info(name):
    model = create_model(name, num_classes=7)
    x = _input(name)
    out = model(x)
    if model_info(name).task == "classification":
        assert out.shape == (2, 7)
    else:
        assert out.shape[:2] == (2, 7)
    assert torch.isfinite(out).all(), f"{name}: NaN or inf in the output"
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"

    # feature_info, declared, against the real maps of forward_stages.
    info = getattr(model, "feature_info", None)
    if info is None:
        assert model_info(name).task != "classification", f"{name}: an image classifier must declare feature_info"
        return
    side = x.shape[-1]
    bigger = torch.randn(1, x.shape[1], side + 32, side + 32)
    with torch.no_grad():
        stages = model.eval().forward_stages(x)
        grown = model.forward_stages(bigger)
    assert len(stages) == len(info), f"{name}: {len(stages)} stage outputs, {len(info)} feature_info entries"
    modules = dict(model.named_modules())
    for entry, feat, feat_grown in zip(info, stages, grown, strict=True):
        where = f"{name}: stage {entry['module']} gave {tuple(feat.shape)}"
        assert entry["module"] in modules, f"{name}: feature_info names a missing module {entry['module']!r}"
        assert feat.shape[:2] == (2, entry["num_chs"]), f"{where}, declared {entry['num_chs']} channels"
        # The reduction is the map's stride: 32 more input pixels give 32 / r more positions, whatever the border
        # losses of unpadded convolutions (Xception's stem, the 2015 U-Net).
        grown_hw = tuple(feat_grown.shape[-2:])
        expect = (feat.shape[-2] + 32 // entry["reduction"], feat.shape[-1] + 32 // entry["reduction"])
        assert grown_hw == expect, f"{where}, {grown_hw} at +32 px: not reduction {entry['reduction']}"
        assert feat.shape[-1] <= -(-side // entry["reduction"]), f"{where}: larger than input / {entry['reduction']}"


@pytest.mark.parametrize("name", list_models(task="classification"))
def test_fashion_mnist_shape_one_channel_28x28(name):
    # The training engine's default job: create_model(name, num_classes=10, in_channels=1) on 28x28 images.
    model = create_model(name, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_fx_feature_extractor_channels_last_and_reset_classifier(name):
    model = randomize(create_model(name))
    x = _input(name)
    with torch.no_grad():
        expect = model(x)
        # The analysis tools trace every model with torch.fx: no data-dependent Python control flow.
        traced = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(traced(x), expect, rtol=1e-5, atol=1e-5)

        # torchvision's feature extraction, with the stage modules that feature_info declares as return nodes.
        nodes = {f["module"]: f"stage{i}" for i, f in enumerate(model.feature_info)}
        extractor = create_feature_extractor(model, return_nodes=nodes)
        got = extractor(x)
        assert list(got) == list(nodes.values())
        for i, (feat, ref) in enumerate(zip(got.values(), model.forward_stages(x), strict=True)):
            torch.testing.assert_close(feat, ref, rtol=0, atol=0, msg=lambda m, i=i: f"{name} stage {i}: {m}")

        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4 * expect.abs().max().item())
        if model_info(name).task == "classification":
            pooled = model.forward_head(model.forward_features(x), pre_logits=True)
            assert pooled.ndim == 2
            model.reset_classifier(3)
            assert model.num_classes == 3 and model(x).shape == (2, 3)
            model.reset_classifier(0)
            assert model(x).shape == pooled.shape
            with pytest.raises(ValueError, match=r"num_classes must satisfy 0 <= num_classes <= 1000000.*got -1"):
                model.reset_classifier(-1)

        # Train mode (batch statistics, dropout, drop path; last, as it moves the running statistics): the same
        # random draws give the same outputs.
        model.train()
        traced_train = torch.fx.symbolic_trace(model)
        torch.manual_seed(5)
        eager_train = model(x)
        torch.manual_seed(5)
        torch.testing.assert_close(traced_train(x), eager_train, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_text_models_forward_backward(name):
    model = create_model(name, num_classes=3)
    vocab = next(m for m in model.modules() if isinstance(m, nn.Embedding)).num_embeddings
    tokens = torch.randint(0, vocab, (4, model_info(name).input_size[0]))
    out = model(tokens)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    out.square().mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for pname, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no finite gradient for {pname}"


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_text_models_trace_with_torch_fx(name):
    # Reference: the eager model, at two sentence lengths (the traced graph must not bake in the length).
    model = create_model(name, num_classes=3).eval()
    traced = torch.fx.symbolic_trace(model)
    vocab = next(m for m in model.modules() if isinstance(m, nn.Embedding)).num_embeddings
    with torch.no_grad():
        for steps in (model_info(name).input_size[0], 7):
            tokens = torch.randint(1, vocab, (3, steps))
            tokens[0, -2:] = 0  # padding at the end of one sentence
            torch.testing.assert_close(traced(tokens), model(tokens), rtol=1e-5, atol=1e-6)


def test_traced_text_model_still_checks_its_input():
    traced = torch.fx.symbolic_trace(create_model("lightconv_classifier").eval())
    with pytest.raises(ValueError, match=r"lightconv_classifier: tokens must be LongTensor\[N, T\], got torch.float32"):
        traced(torch.randn(2, 5))


@pytest.mark.parametrize("name", list_models(task="detection"))
def test_detection_models_do_not_trace_but_their_backbones_do(name):
    # Like torchvision's detectors: a list of images of different sizes in, a data-dependent number of proposals.
    model = create_model(name, num_classes=3, backbone="mobilenet_v3_small").eval()
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    # The CNN inside traces, and torchvision's feature extractor works on it (R-CNN's runs on warped crops).
    cnn = model.roi_heads.box_features.cnn if name == "rcnn" else model.backbone.body
    nodes = {f["module"]: str(i) for i, f in enumerate(cnn.feature_info)}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for got, ref in zip(create_feature_extractor(cnn, nodes)(x).values(), cnn.forward_stages(x), strict=True):
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
        if name != "rcnn":  # the Backbone module (stage choice, optional pyramid) traces as a whole
            for got, ref in zip(torch.fx.symbolic_trace(model.backbone)(x), model.backbone(x), strict=True):
                torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_every_family_is_registered():
    expected = {
        "resnext50_32x4d",
        "resnext101_32x8d",
        "densenet121",
        "densenet169",
        "densenet201",
        "mobilenet_v1",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "resnet9",
    }
    assert expected <= set(list_models())
    assert list_models("mobilenet_v3*") == ["mobilenet_v3_large", "mobilenet_v3_small"]


def test_create_model_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'resnext50_32x4'.*did you mean: resnext50_32x4d"):
        create_model("resnext50_32x4")


def test_create_model_unknown_keyword_lists_close_matches():
    with pytest.raises(ValueError, match=r"mobilenet_v2: unknown keyword 'width_multiplier'.*did you mean: width_mult"):
        create_model("mobilenet_v2", width_multiplier=0.5)


def test_create_model_keyword_fixed_by_the_variant_is_a_clear_error():
    # Regression: resnext50_32x4d fixes depths; passing it used to escape as a TypeError ("multiple values").
    with pytest.raises(ValueError, match=r"resnext50_32x4d: 'depths' is fixed by this variant.*ResNeXt\(\.\.\.\)"):
        create_model("resnext50_32x4d", depths=(1, 1, 1, 1))


def test_duplicate_registration_raises():
    def densenet121(**kwargs):  # same name as a registered builder
        raise AssertionError("never built")

    before = model_info("densenet121")
    with pytest.raises(ValueError, match="'densenet121' is already registered"):
        register_model(densenet121)
    assert model_info("densenet121") is before


def test_bad_hyperparameters_name_the_argument():
    # One example per rule; tests/test_models_checks.py holds the table for every family.
    with pytest.raises(ValueError, match=r"DenseNet: compression must satisfy 0 < compression <= 1, got 1.5"):
        create_model("densenet121", compression=1.5)
    with pytest.raises(ValueError, match=r"MobileNetV1: width_mult must satisfy 0 < width_mult <= 16, got -1"):
        create_model("mobilenet_v1", width_mult=-1)
    with pytest.raises(ValueError, match=r"ResNeXt: depths must hold 4 values, got 2: \(3, 4\)"):
        ResNeXt(depths=(3, 4))


def test_onnx_export_matches_onnxruntime():
    # Reference: ONNX Runtime executing the exported graph, against our eager forward.
    ort = pytest.importorskip("onnxruntime")
    model = randomize(create_model("mobilenet_v3_small"))
    x = torch.randn(2, 3, 64, 64)
    buf = io.BytesIO()
    with pytest.warns(DeprecationWarning):  # the TorchScript exporter: the dynamo one needs onnxscript
        torch.onnx.export(
            model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}}
        )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, 64, 64)  # another batch size through the dynamic axis
    got = session.run(None, {"x": x3.numpy()})[0]
    with torch.no_grad():
        expect = model(x3).numpy()
    assert np.abs(expect).max() > 1e-2
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)


def test_torch_compile_matches_eager():
    # Reference: the eager model. fullgraph=True fails on any graph break (data-dependent control flow); the
    # aot_eager backend runs dynamo and AOTAutograd (forward and backward graphs) without inductor's C++ build,
    # which takes minutes on a 2-core CPU.
    model = randomize(create_model("mobilenet_v3_small", num_classes=10))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    compiled(x).square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).square().sum().backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_cli_models_lists_names_tasks_and_counts(capsys):
    # Reference: the parameter counts of the real models (built on the meta device here too).
    from convatlas.cli import main

    assert main(["models", "densenet*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "task", "input", "parameters"] and lines[-1] == "3 models"
    for line, name in zip(lines[1:-1], ["densenet121", "densenet169", "densenet201"], strict=True):
        with torch.device("meta"):
            expected = sum(p.numel() for p in create_model(name).parameters())
        assert line.split() == [name, "classification", "3x224x224", f"{expected:,}"]
    assert main(["models", "v3_sm"]) == 0  # a plain word matches anywhere in the name
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["mobilenet_v3_small", "classification"]


def test_cli_models_no_match_is_one_line_exit_2(capsys):
    from convatlas.cli import main

    assert main(["models", "resnxt"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "no model matches 'resnxt'; did you mean: resnet9, resnext50_32x4d" in err
