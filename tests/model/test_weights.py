"""Starting weights: detectron2 model-zoo files and torchvision COCO files.

The detectron2 files are synthetic but built from detectron2's naming rules written out
here (stem, res2..res5 with 3/4/23/3 or 3/4/6/3 bottlenecks, conv1..3 with ``.norm``,
``shortcut`` in each stage's first block, fpn_lateral/fpn_output 2..5, rpn_head,
box_head fc1/fc2, mask_fcn1..4, deconv, predictors), not from our converter.
"""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

from napari_vertebra.model.build import CheckpointError, build_model
from napari_vertebra.model.weights import (
    has_stride_in_1x1,
    load_starting_weights,
    read_weights,
    set_stride_in_1x1,
)

#: A small input keeps the (full-size) R-101 / R-50 models quick to build.
SMALL = {"min_size": 128, "max_size": 128, "box_detections_per_img": 10}
BLOCKS = {101: (3, 4, 23, 3), 50: (3, 4, 6, 3)}


def detectron2_state(depth: int, rng: np.random.Generator, n_classes: int = 80) -> dict:
    """A detectron2 Mask R-CNN R-FPN state dict (numpy, random) by detectron2's names."""
    s: dict[str, np.ndarray] = {}

    def arr(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def conv_norm(prefix, cout, cin, k):
        s[f"{prefix}.weight"] = arr(cout, cin, k, k)
        for leaf in ("weight", "bias", "running_mean"):
            s[f"{prefix}.norm.{leaf}"] = arr(cout)
        s[f"{prefix}.norm.running_var"] = rng.uniform(0.5, 2.0, cout).astype(np.float32)

    bb = "backbone.bottom_up"
    conv_norm(f"{bb}.stem.conv1", 64, 3, 7)
    cin = 64
    for i, n_blocks in enumerate(BLOCKS[depth]):
        stage = i + 2
        width, cout = 64 * 2**i, 256 * 2**i
        for b in range(n_blocks):
            p = f"{bb}.res{stage}.{b}"
            if b == 0:
                conv_norm(f"{p}.shortcut", cout, cin, 1)
            conv_norm(f"{p}.conv1", width, cin if b == 0 else cout, 1)
            conv_norm(f"{p}.conv2", width, width, 3)
            conv_norm(f"{p}.conv3", cout, width, 1)
        cin = cout
    for stage, c in zip(range(2, 6), (256, 512, 1024, 2048), strict=True):
        s[f"backbone.fpn_lateral{stage}.weight"] = arr(256, c, 1, 1)
        s[f"backbone.fpn_lateral{stage}.bias"] = arr(256)
        s[f"backbone.fpn_output{stage}.weight"] = arr(256, 256, 3, 3)
        s[f"backbone.fpn_output{stage}.bias"] = arr(256)
    rpn = "proposal_generator.rpn_head"
    s[f"{rpn}.conv.weight"], s[f"{rpn}.conv.bias"] = arr(256, 256, 3, 3), arr(256)
    s[f"{rpn}.objectness_logits.weight"], s[f"{rpn}.objectness_logits.bias"] = (
        arr(3, 256, 1, 1),
        arr(3),
    )
    s[f"{rpn}.anchor_deltas.weight"], s[f"{rpn}.anchor_deltas.bias"] = arr(12, 256, 1, 1), arr(12)
    s["roi_heads.box_head.fc1.weight"], s["roi_heads.box_head.fc1.bias"] = (
        arr(1024, 256 * 7 * 7),
        arr(1024),
    )
    s["roi_heads.box_head.fc2.weight"], s["roi_heads.box_head.fc2.bias"] = (
        arr(1024, 1024),
        arr(1024),
    )
    s["roi_heads.box_predictor.cls_score.weight"] = arr(n_classes + 1, 1024)
    s["roi_heads.box_predictor.cls_score.bias"] = arr(n_classes + 1)
    s["roi_heads.box_predictor.bbox_pred.weight"] = arr(4 * n_classes, 1024)
    s["roi_heads.box_predictor.bbox_pred.bias"] = arr(4 * n_classes)
    for j in range(1, 5):
        s[f"roi_heads.mask_head.mask_fcn{j}.weight"] = arr(256, 256, 3, 3)
        s[f"roi_heads.mask_head.mask_fcn{j}.bias"] = arr(256)
    s["roi_heads.mask_head.deconv.weight"] = arr(256, 256, 2, 2)  # (in, out, kh, kw)
    s["roi_heads.mask_head.deconv.bias"] = arr(256)
    s["roi_heads.mask_head.predictor.weight"] = arr(n_classes, 256, 1, 1)
    s["roi_heads.mask_head.predictor.bias"] = arr(n_classes)
    return s


def expected_name(d2: str) -> str | None:
    """Our name for a detectron2 backbone/FPN name (written from the two libraries'
    module layouts: torchvision's ResNet layer1..4 / bn1..3 / downsample.0-1 and its
    FeaturePyramidNetwork inner_blocks / layer_blocks)."""
    parts = d2.split(".")
    if d2.startswith("backbone.bottom_up.stem.conv1."):
        rest = parts[4:]
        return "backbone.body." + (
            "conv1.weight" if rest == ["weight"] else "bn1." + ".".join(rest[1:])
        )
    if d2.startswith("backbone.bottom_up.res"):
        stage, block, conv, rest = int(parts[2][3:]), parts[3], parts[4], parts[5:]
        base = f"backbone.body.layer{stage - 1}.{block}."
        norm = rest[0] == "norm"
        leaf = ".".join(rest[1:] if norm else rest)
        if conv == "shortcut":
            return base + ("downsample.1." if norm else "downsample.0.") + leaf
        return base + (f"bn{conv[-1]}." if norm else f"conv{conv[-1]}.") + leaf
    if d2.startswith("backbone.fpn_"):
        kind, leaf = parts[1], parts[2]
        level = int(kind[-1]) - 2
        blocks = "inner_blocks" if kind.startswith("fpn_lateral") else "layer_blocks"
        return f"backbone.fpn.{blocks}.{level}.0.{leaf}"
    return None


def _write_pkl(path, state: dict, **extra) -> None:
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo", **extra}, f)


@pytest.fixture(scope="module")
def d2_r101(tmp_path_factory):
    rng = np.random.default_rng(0)
    state = detectron2_state(101, rng)
    path = tmp_path_factory.mktemp("d2") / "model_final_test.pkl"
    _write_pkl(path, state)
    return path, state


@pytest.mark.slow  # full-size models: ~20 s on a loaded machine
def test_detectron2_r101_loads_every_backbone_and_fpn_tensor(d2_r101, caplog):
    path, src = d2_r101
    with caplog.at_level(logging.INFO, logger="napari_vertebra.model.weights"):
        model = build_model({"backbone": "resnet101", "weights": str(path), **SMALL})
    own = model.state_dict()
    required = [
        k for k in own if k.startswith("backbone.") and not k.endswith("num_batches_tracked")
    ]
    covered = set()
    for d2_key, array in src.items():
        ours = expected_name(d2_key)
        if ours is None:
            continue
        assert ours in own, ours
        covered.add(ours)
        if ours in ("backbone.body.conv1.weight",):
            # BGR 0..255 (std 1) -> RGB normalised: reversed input channels, scaled by
            # 255 * torchvision's std (the mean is 255 x ImageNet's: no offset)
            std = torch.tensor([0.229, 0.224, 0.225])
            expected = torch.from_numpy(array[:, ::-1].copy()) * 255.0 * std[None, :, None, None]
            assert torch.allclose(own[ours], expected, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(own[ours], torch.from_numpy(array)), ours
    assert covered == set(required)  # every backbone and FPN parameter and buffer
    # heads that are not class-specific load too; class heads do not
    assert torch.equal(
        own["roi_heads.box_head.fc6.weight"],
        torch.from_numpy(src["roi_heads.box_head.fc1.weight"]),
    )
    assert torch.equal(
        own["roi_heads.mask_predictor.conv5_mask.weight"],
        torch.from_numpy(src["roi_heads.mask_head.deconv.weight"]),
    )
    assert torch.equal(
        own["rpn.head.cls_logits.weight"],
        torch.from_numpy(src["proposal_generator.rpn_head.objectness_logits.weight"]),
    )
    assert any("cls_score" in s for s in model.skipped_keys)
    assert any("mask_fcn_logits" in s for s in model.skipped_keys)
    assert not any("backbone" in s for s in model.skipped_keys)
    text = caplog.text
    assert "class-specific" in text
    assert "stride" in text  # the model strides in the 3x3 convs: said loudly
    assert type(model.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"


def test_detectron2_first_conv_sees_the_same_image():
    """The converted stem computes on torchvision's normalised RGB what detectron2's
    computes on BGR 0..255 minus its pixel mean (with a non-trivial pixel mean and std,
    so the folded offset is exercised)."""
    import torch.nn.functional as F

    from napari_vertebra.model.weights import detectron2_to_torchvision

    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 3, 7, 7, generator=g, dtype=torch.float64)
    rm, rv = torch.randn(8, generator=g, dtype=torch.float64), torch.rand(8, generator=g) + 0.5
    state = {
        "backbone.bottom_up.stem.conv1.weight": w,
        "backbone.bottom_up.stem.conv1.norm.running_mean": rm,
    }
    mean_bgr, std_bgr = (100.0, 120.0, 130.0), (50.0, 60.0, 70.0)
    out, unknown = detectron2_to_torchvision(state, set(), mean_bgr, std_bgr)
    assert unknown == []
    x = torch.rand(1, 3, 40, 30, generator=g, dtype=torch.float64)  # RGB in 0..1
    m = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)[None, :, None, None]
    s = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)[None, :, None, None]
    x_d2 = (255 * x.flip(1) - torch.tensor(mean_bgr, dtype=torch.float64)[None, :, None, None]) / (
        torch.tensor(std_bgr, dtype=torch.float64)[None, :, None, None]
    )
    y_d2 = F.conv2d(x_d2, w, stride=2) - rm[None, :, None, None]  # no padding: interior
    y_ours = (
        F.conv2d((x - m) / s, out["backbone.body.conv1.weight"], stride=2)
        - out["backbone.body.bn1.running_mean"][None, :, None, None]
    )
    assert torch.allclose(y_d2, y_ours, atol=1e-8)
    del rv


@pytest.mark.slow  # full-size models: ~20 s on a loaded machine
def test_detectron2_mismatched_files_are_errors(d2_r101, tmp_path, caplog):
    rng = np.random.default_rng(1)
    # an R-50 file into the R-101 model: res4.6..22 are missing
    r50 = tmp_path / "r50.pkl"
    _write_pkl(r50, detectron2_state(50, rng))
    with pytest.raises(CheckpointError, match=r"r50\.pkl.*layer3\.6\.") as e:
        build_model({"backbone": "resnet101", "weights": str(r50), **SMALL})
    assert "missing from the file" in str(e.value)
    # the R-101 file into an R-50 model: extra backbone tensors are an error too
    path, src = d2_r101
    model50 = build_model({"backbone": "resnet50", **SMALL})
    with pytest.raises(CheckpointError, match=r"not in this model|shape"):
        load_starting_weights(model50, path)
    # a truncated key set: no fpn_output3
    cut = {k: v for k, v in src.items() if not k.startswith("backbone.fpn_output3.")}
    short = tmp_path / "short.pkl"
    _write_pkl(short, cut)
    model = build_model({"backbone": "resnet101", **SMALL})
    with pytest.raises(CheckpointError, match=r"layer_blocks\.1\.0\.weight"):
        load_starting_weights(model, short)
    # opting out loads the rest with a loud warning
    before = model.backbone.fpn.layer_blocks[1][0].weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="napari_vertebra.model.weights"):
        load_starting_weights(model, short, allow_partial=True)
    assert "PARTIAL START" in caplog.text and "layer_blocks.1.0.weight" in caplog.text
    assert torch.equal(model.backbone.fpn.layer_blocks[1][0].weight, before)
    assert torch.equal(
        model.backbone.fpn.layer_blocks[0][0].weight,
        torch.from_numpy(src["backbone.fpn_output2.weight"]),
    )


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    p = tmp_path / "evil.pkl"
    with open(p, "wb") as f:
        pickle.dump({"model": {"x": Evil()}, "__author__": "x"}, f)
    with pytest.raises(CheckpointError, match=r"evil\.pkl"):
        read_weights(p)
    c2 = tmp_path / "c2.pkl"
    with open(c2, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.zeros((64, 3, 7, 7), np.float32)}}, f)
    with pytest.raises(CheckpointError, match="Caffe2"):
        read_weights(c2)
    with pytest.raises(CheckpointError, match="download it from https://"):
        read_weights(tmp_path / "model_final_a3ec72.pkl")


def test_stride_in_1x1():
    import torchvision

    body = torchvision.models.resnet50(weights=None)
    x = torch.rand(1, 3, 64, 64)
    before = body.layer4(body.layer3(body.layer2(torch.zeros(1, 256, 16, 16)))).shape
    assert not has_stride_in_1x1(body)
    set_stride_in_1x1(body)
    assert has_stride_in_1x1(body)
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(body, name)[0]
        assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
        assert block.downsample[0].stride == (2, 2)
    assert body.layer1[0].conv1.stride == (1, 1)
    after = body.layer4(body.layer3(body.layer2(torch.zeros(1, 256, 16, 16)))).shape
    assert before == after
    body.eval()
    assert body(x).shape == (1, 1000)
    with pytest.raises(ValueError, match="bottleneck"):
        set_stride_in_1x1(torchvision.models.resnet18(weights=None))


@pytest.mark.slow  # full-size models: ~20 s on a loaded machine
def test_torchvision_coco_v2_loads_and_v1_is_refused(tmp_path):
    import torchvision

    tv = torchvision.models.detection
    v2 = tv.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)  # 91 classes
    p2 = tmp_path / "maskrcnn_resnet50_fpn_v2_coco.pth"
    torch.save(v2.state_dict(), p2)
    model = build_model({"backbone": "resnet50", "weights": str(p2), **SMALL})
    src, own = v2.state_dict(), model.state_dict()
    required = [
        k for k in own if k.startswith("backbone.") and not k.endswith("num_batches_tracked")
    ]
    assert required and any(k.startswith("backbone.fpn.") for k in required)
    for k in required:
        assert torch.equal(own[k], src[k]), k
    assert any("cls_score" in s for s in model.skipped_keys)
    v1 = tv.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    p1 = tmp_path / "maskrcnn_resnet50_fpn_v1_coco.pth"
    torch.save(v1.state_dict(), p1)
    with pytest.raises(CheckpointError, match=r"v1_coco\.pth.*backbone\.fpn\."):
        build_model({"backbone": "resnet50", "weights": str(p1), **SMALL})


def test_imagenet_file_of_another_depth_is_refused(tiny_config, tmp_path, caplog):
    """An ImageNet ResNet file needs only the ResNet body, but all of it, and no more."""
    import torchvision

    p34 = tmp_path / "resnet34-imagenet.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), p34)
    with pytest.raises(CheckpointError, match=r"resnet34-imagenet\.pth.*layer1\.2\."):
        build_model({**tiny_config.to_dict(), "weights": str(p34)})  # tiny is a ResNet-18
    p18 = tmp_path / "resnet18-imagenet.pth"
    rn18 = torchvision.models.resnet18(weights=None)
    torch.save(rn18.state_dict(), p18)
    with caplog.at_level(logging.INFO, logger="napari_vertebra.model.weights"):
        model = build_model({**tiny_config.to_dict(), "weights": str(p18)})
    assert "ImageNet" in caplog.text  # the FPN and heads start from random values: said
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, rn18.layer4[1].conv2.weight)
