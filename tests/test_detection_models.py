"""R-CNN, Fast R-CNN and Faster R-CNN: sampling rules, anchors (vs torchvision), box coding in context, the RPN's
output order, tiny-overfit losses, empty images and bad boxes."""

from __future__ import annotations

import math

import pytest
import torch

from convatlas.detection import AnchorGenerator, RegionProposalNetwork, RoIHeads, RoIPoolFeatures, WarpFeatures
from convatlas.detection.anchors import BACKGROUND, IGNORE, match_boxes, sample_labels
from convatlas.models import create_model, list_models
from convatlas.ops.boxes import box_iou, decode_boxes

BACKBONE = "mobilenet_v3_small"
SMALL = {"num_classes": 3, "backbone": BACKBONE, "representation_size": 64}


def _scene():
    """A 96x96 image with two bright blocks and their boxes."""
    image = torch.zeros(3, 96, 96)
    image[:, 10:40, 12:50] = 1.0
    image[:, 55:90, 50:80] = 0.6
    target = {"boxes": torch.tensor([[12.0, 10, 50, 40], [50, 55, 80, 90]]), "labels": torch.tensor([1, 2])}
    return image, target


def _random_boxes(n, gen, size=200.0):
    xy = torch.rand(n, 2, generator=gen) * size
    wh = 5 + torch.rand(n, 2, generator=gen) * 60
    return torch.cat([xy, xy + wh], dim=1)


def test_detectors_are_registered_for_detection():
    assert {"rcnn", "fast_rcnn", "faster_rcnn"} <= set(list_models(task="detection"))
    with pytest.raises(ValueError, match="unknown keyword 'num_class'"):
        create_model("faster_rcnn", num_class=3)


def test_rpn_sampling_256_anchors_at_most_half_positive():
    gen = torch.Generator().manual_seed(0)
    anchors = AnchorGenerator(sizes=((16.0, 32.0, 64.0),))([(25, 25)], [8])[0]
    gt = _random_boxes(6, gen)
    matches = match_boxes(anchors, gt, high=0.7, low=0.3, allow_low_quality=True)
    iou = box_iou(gt, anchors)
    best = iou.max(dim=0).values
    assert (matches[best >= 0.7] >= 0).all()
    assert (matches[(best >= 0.3) & (best < 0.7)] != BACKGROUND).all()
    assert (matches[best < 0.3] < 0).all() or (matches[best < 0.3] >= 0).sum() <= 6 * 3  # only best-per-gt anchors
    for g in range(6):  # every ground-truth box gets its best anchor, even below 0.7
        assert matches[iou[g].argmax()] >= 0
    pos, neg = sample_labels(matches, batch_size=256, positive_fraction=0.5, generator=gen)
    assert len(pos) + len(neg) == 256 and len(pos) <= 128
    assert (matches[pos] >= 0).all() and (matches[neg] == BACKGROUND).all()
    assert len(set(pos.tolist())) == len(pos) and len(set(neg.tolist())) == len(neg)


def test_fast_rcnn_sampling_64_rois_quarter_foreground_background_from_0_1():
    gen = torch.Generator().manual_seed(1)
    gt = torch.tensor([[50.0, 50, 110, 120]])
    proposals = torch.cat([gt + torch.randn(200, 4, generator=gen) * 4, _random_boxes(800, gen)])
    heads = RoIHeads(RoIPoolFeatures(8, strides=[16], representation_size=16), num_classes=2,
                     background_iou=(0.1, 0.5), batch_size_per_image=64, positive_fraction=0.25)  # fmt: skip
    sampled, labels, _ = heads.sample([proposals], [{"boxes": gt, "labels": torch.tensor([2])}])
    iou = box_iou(sampled[0], gt)[:, 0]
    assert len(labels) == 64 and int((labels > 0).sum()) == 16
    assert (iou[labels > 0] >= 0.5).all() and (labels[labels > 0] == 2).all()
    assert ((iou[labels == 0] >= 0.1) & (iou[labels == 0] < 0.5)).all()


def test_rcnn_positives_are_iou_at_least_half():
    gen = torch.Generator().manual_seed(2)
    gt = torch.tensor([[20.0, 20, 80, 90], [120, 30, 170, 60]])
    proposals = torch.cat([gt.repeat(30, 1) + torch.randn(60, 4, generator=gen) * 6, _random_boxes(300, gen)])
    model = create_model("rcnn", num_classes=2, backbone=BACKBONE, warp_size=32, context=2)
    heads = model.roi_heads
    assert heads.batch_size_per_image == 128 and heads.positive_fraction == 0.25 and heads.background_iou == (0, 0.5)
    sampled, labels, _ = heads.sample([proposals], [{"boxes": gt, "labels": torch.tensor([1, 2])}])
    best = box_iou(sampled[0], gt).max(dim=1).values
    assert torch.equal(labels > 0, best >= 0.5)
    assert int((labels > 0).sum()) == 32 and len(labels) == 128


def test_match_boxes_ignores_between_thresholds_and_handles_no_ground_truth():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 40], [50, 50, 60, 60]])
    gt = torch.tensor([[0.0, 0, 10, 10]])  # IoUs 1, 0.5, 0.25, 0
    assert match_boxes(boxes, gt, high=0.5, low=0.5, min_low=0.1).tolist() == [0, 0, BACKGROUND, IGNORE]
    assert match_boxes(boxes, gt, high=0.7, low=0.3).tolist() == [0, IGNORE, BACKGROUND, BACKGROUND]
    assert match_boxes(boxes, torch.zeros(0, 4), high=0.7, low=0.3).tolist() == [BACKGROUND] * 4


def test_anchors_match_torchvision_up_to_the_half_cell_centre():
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchors
    from torchvision.models.detection.image_list import ImageList

    sizes, ratios = (32.0, 64.0, 128.0), (0.5, 1.0, 2.0)
    ours = AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))([(6, 7)], [16])[0]
    tv = TVAnchors(sizes=(sizes,), aspect_ratios=(ratios,))
    ref = tv(ImageList(torch.zeros(1, 3, 96, 112), [(96, 112)]), [torch.zeros(1, 8, 6, 7)])[0]
    # torchvision centres cell (y, x) at (y * 16, x * 16) and rounds the base anchors; we centre at the cell middle.
    assert ours.shape == ref.shape == (6 * 7 * 9, 4)
    torch.testing.assert_close(ours - 8.0, ref, atol=0.5, rtol=0)
    area = (ours[:, 2] - ours[:, 0]) * (ours[:, 3] - ours[:, 1])
    assert torch.allclose(area[:9], torch.tensor(sizes * 3) ** 2)


def test_rpn_output_order_matches_anchor_order():
    anchors = AnchorGenerator(sizes=((16.0, 40.0),), aspect_ratios=((0.5, 1.0, 2.0),))
    rpn = RegionProposalNetwork(4, anchor_generator=anchors, pre_nms_top_n=(1, 1), post_nms_top_n=(1, 1)).eval()
    for layer in (rpn.head.objectness, rpn.head.deltas):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    for a in range(6):  # make anchor type a the most objectness-y everywhere
        rpn.head.objectness.bias.data.zero_()
        rpn.head.objectness.bias.data[a] = 5.0
        proposals, _ = rpn([torch.zeros(1, 4, 8, 8)], [16], [(128, 128)])
        ratio, size = (0.5, 1.0, 2.0)[a // 2], (16.0, 40.0)[a % 2]
        w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)
        expected = torch.tensor([8 - w / 2, 8 - h / 2, 8 + w / 2, 8 + h / 2]).clamp(min=0)  # cell (0, 0), clipped
        torch.testing.assert_close(proposals[0][0], expected)


def test_box_coding_round_trip_through_the_heads():
    # encode (in sampling) -> deltas -> decode (in post-processing) gives back the ground truth exactly.
    gen = torch.Generator().manual_seed(3)
    gt = torch.tensor([[10.0, 12, 60, 70]])
    proposals = gt + torch.randn(40, 4, generator=gen) * 5
    heads = RoIHeads(RoIPoolFeatures(4, strides=[16], representation_size=8), num_classes=1, score_threshold=0.0,
                     add_gt_as_proposals=False, nms_threshold=1.0)  # fmt: skip
    sampled, labels, goals = heads.sample([proposals], [{"boxes": gt, "labels": torch.tensor([1])}])
    fg = labels > 0
    assert fg.any()
    torch.testing.assert_close(decode_boxes(goals[fg], sampled[0][fg], heads.box_weights), gt.expand(int(fg.sum()), 4))
    logits = torch.tensor([[0.0, 10.0]]).repeat(int(fg.sum()), 1)
    deltas = torch.cat([torch.zeros(int(fg.sum()), 4), goals[fg]], dim=1)  # background column, class 1 column
    detections = heads.postprocess(logits, deltas, [sampled[0][fg]], [(200, 200)])[0]
    torch.testing.assert_close(detections["boxes"], gt.expand(len(detections["boxes"]), 4), atol=1e-4, rtol=0)


def test_warp_features_dilate_by_16_pixels_of_context_at_224():
    warp = WarpFeatures(create_model(BACKBONE), warp_size=224, context=16)
    box = torch.tensor([[100.0, 100, 292, 196]])  # 192 x 96
    grown = warp.dilate(box)
    torch.testing.assert_close(grown, torch.tensor([[84.0, 92, 308, 204]]))  # 192 -> 224, 96 -> 112


@pytest.mark.parametrize("name", ["faster_rcnn", "fast_rcnn", "rcnn"])
def test_losses_and_detections_both_and_empty_images_train(name):
    image, target = _scene()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    kwargs = dict(SMALL)
    if name == "rcnn":
        kwargs = {"num_classes": 3, "backbone": BACKBONE, "warp_size": 32, "context": 2}
    model = create_model(name, **kwargs)
    given = [target["boxes"] + 2.0, torch.tensor([[5.0, 5, 30, 30]])]  # as cached selective search would give
    proposals = {} if name == "faster_rcnn" else {"proposals": given}
    losses, detections = model([image, image * 0.5], [target, empty], **proposals)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # an image without boxes alone: finite losses, zero box-regression loss
    model.zero_grad()
    only_empty = {"proposals": proposals["proposals"][1:]} if proposals else {}
    losses, _ = model([image * 0.5], [empty], detect=False, **only_empty)
    assert losses["loss_box"].item() == 0.0 and torch.isfinite(losses["loss_classifier"])
    sum(losses.values()).backward()


def test_degenerate_boxes_are_rejected_naming_image_and_box():
    model = create_model("faster_rcnn", **SMALL)
    image, target = _scene()
    bad = {"boxes": torch.tensor([[1.0, 1, 20, 20], [30.0, 40, 30, 60]]), "labels": torch.tensor([1, 1])}
    with pytest.raises(ValueError, match=r"targets\[1\]: box 1 \(30.0, 40.0, 30.0, 60.0\) is degenerate"):
        model([image, image], [target, bad])
    with pytest.raises(ValueError, match=r"targets\[0\]: label 4 of box 1 is outside 1..3"):
        model([image], [{"boxes": target["boxes"], "labels": torch.tensor([1, 4])}])
    with pytest.raises(ValueError, match=r"images\[0\]: need Tensor\[3, H, W\]"):
        model([torch.zeros(1, 32, 32)])


def test_feature_pyramid_backbone_shapes():
    model = create_model("faster_rcnn", fpn=True, anchor_sizes=(16.0, 32.0, 64.0, 128.0), **SMALL).eval()
    assert model.backbone.strides == [4, 8, 16, 32]
    features = model.backbone(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert all(f.shape[1] == 256 for f in features)
    _, detections = model([torch.rand(3, 64, 96)])
    assert detections[0]["boxes"].shape[1] == 4


def test_tiny_overfit_losses_go_down():
    torch.manual_seed(0)
    image, target = _scene()
    model = create_model("faster_rcnn", **SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(25):
        losses, _ = model([image], [target], detect=False)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert sum(last.values()) < 0.5 * sum(first.values())
    assert last["loss_classifier"] < first["loss_classifier"] and last["loss_objectness"] < first["loss_objectness"]


def test_precise_batch_norm_sets_population_statistics():
    # Reference: the mean and (unbiased) variance of the first batch-norm layer's input, recorded by a hook.
    from convatlas.train.detection import precise_batch_norm

    image, target = _scene()
    model = create_model("faster_rcnn", **SMALL)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    hook = bn.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    dataset = [(image, target), (image.flip(2), {"boxes": target["boxes"], "labels": target["labels"]})]
    assert precise_batch_norm(model, dataset, cache=None, device="cpu", num_images=2, batch_size=2) > 0
    hook.remove()
    x = seen[0].transpose(0, 1).flatten(1)  # (C, N*H*W)
    torch.testing.assert_close(bn.running_mean, x.mean(dim=1))
    torch.testing.assert_close(bn.running_var, x.var(dim=1, unbiased=True))
    assert bn.momentum == 0.01 and not model.training


def test_precise_batch_norm_gives_each_layer_the_statistics_of_its_input_at_evaluation():
    # Reference: the mean and (unbiased) variance of every batch-norm layer's input in an eval-mode pass over the same
    # images, recorded by hooks. A single training-mode pass (every layer normalising with its batch's statistics)
    # gets the first layer right and the later ones wrong.
    from convatlas.train.detection import precise_batch_norm

    image, target = _scene()
    model = create_model("faster_rcnn", **SMALL)
    model.train()
    for _ in range(2):  # move the weights away from batch norm's identity start
        losses, _ = model([image], [target], detect=False)
        sum(losses.values()).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.05 * p.grad.sign()
                    p.grad = None
    dataset = [(image, target), (image.flip(2), {"boxes": target["boxes"], "labels": target["labels"]})]
    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert precise_batch_norm(model, dataset, cache=None, device="cpu", num_images=2, batch_size=2) == len(layers)
    seen = {}

    def record(module, inputs, output):
        seen.setdefault(module, inputs[0].detach().clone())

    hooks = [m.register_forward_hook(record) for m in layers]
    with torch.no_grad():
        model([im for im, _ in dataset])
    for h in hooks:
        h.remove()
    for layer in layers:
        x = seen[layer].transpose(0, 1).flatten(1)
        torch.testing.assert_close(layer.running_mean, x.mean(dim=1), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer.running_var, x.var(dim=1, unbiased=True), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", ["fast_rcnn", "rcnn"])
def test_no_proposals_and_no_boxes_give_zero_losses_and_no_detections(name):
    # regression: an empty RoI set once failed reshaping its (0, (K+1)*4) deltas
    kwargs = {"num_classes": 3, "backbone": BACKBONE}
    kwargs.update({"warp_size": 32, "context": 2} if name == "rcnn" else {"representation_size": 32})
    model = create_model(name, **kwargs)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    image = torch.rand(3, 64, 64)
    losses, detections = model([image, image], [empty, empty], proposals=[torch.zeros(0, 4), torch.zeros(0, 4)])
    assert all(v.item() == 0.0 for v in losses.values())
    assert [len(d["boxes"]) for d in detections] == [0, 0]
    sum(losses.values()).backward()
