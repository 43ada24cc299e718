"""Mask R-CNN for vertebrae: model construction, starting weights and our checkpoints.

Nothing is ever downloaded: torchvision builders get ``weights=None`` and
``weights_backbone=None``; starting weights come from a local file named in the config.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from napari_vertebra.core.labels import get_class_set

from .config import TrainConfig, as_config
from .weights import load_starting_weights, set_stride_in_1x1

__all__ = [
    "BACKBONES",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "build_model",
    "config_from_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
#: Key and version that mark a file as one of our checkpoints.
CHECKPOINT_FORMAT = ("napari_vertebra_checkpoint", 1)


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used."""


#: torchvision's own Mask R-CNN settings (for comparisons; see benchmarks/model.py).
TORCHVISION_SETTINGS = {
    "rpn_pre_nms_top_n_train": 2000,
    "rpn_post_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_test": 1000,
    "rpn_batch_size_per_image": 256,
    "box_batch_size_per_image": 512,
    "box_detections_per_img": 100,
    "box_score_thresh": 0.05,
}


def _min_size(value: Any) -> int | tuple[int, ...]:
    """``min_size`` as torchvision takes it: an int, or a tuple (multi-scale training:
    one picked at random per batch; inference uses the last)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("min_size: give a size or a non-empty list of sizes")
        return tuple(int(v) for v in value)
    return int(value)


def build_model(
    config: TrainConfig | dict[str, Any] | None = None,
    settings: str = "task",
    load_weights: bool = True,
) -> MaskRCNN:
    """A torchvision Mask R-CNN from ``config``: the class set's classes plus background
    (18 for the paper's T1..L5, 22 for the extended set), and with ``pixels_per_mm`` a
    :class:`~napari_vertebra.model.scale.FixedScaleTransform` instead of torchvision's
    resizing to ``min_size``.

    ``settings="torchvision"`` keeps the architecture but uses torchvision's default
    RPN/ROI numbers (2000/1000 proposals, 100 detections). Starting weights (config
    ``weights``) are loaded when given; the skipped keys are in ``model.skipped_keys``.
    Without starting weights the backbone uses trainable BatchNorm (FrozenBatchNorm from
    random weights diverges), with weights FrozenBatchNorm.

    The architecture depends on the config only: frozen stages and norm layers follow
    ``weights`` being set even with ``load_weights=False`` (a resumed run or a
    checkpoint rebuilds the model it was trained as, then loads its own weights).
    """
    try:
        cfg = as_config(config)
    except ValueError as e:
        if "backbone" in str(e):
            raise ValueError(f"unknown backbone: {e}") from None
        raise
    if settings not in ("task", "torchvision"):
        raise ValueError(f"settings must be 'task' or 'torchvision'; got {settings!r}")
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in cfg.anchor_sizes),
        aspect_ratios=(cfg.aspect_ratios,) * len(cfg.anchor_sizes),
    )
    kw = {k: getattr(cfg, k) for k in TORCHVISION_SETTINGS}
    kw["box_positive_fraction"] = cfg.box_positive_fraction
    if settings == "torchvision":
        kw.update(TORCHVISION_SETTINGS)
    common = dict(min_size=_min_size(cfg.min_size), max_size=cfg.max_size, **kw)
    n_classes = get_class_set(cfg.class_set).num_classes
    if cfg.backbone == "resnet50":
        model = _resnet50_v2(cfg, n_classes, anchors, common)
    else:
        model = _resnet_fpn(cfg, n_classes, anchors, common)
    if cfg.pixels_per_mm is not None:
        from .scale import FixedScaleTransform

        t = model.transform
        model.transform = FixedScaleTransform(
            cfg.pixels_per_mm, cfg.max_size, t.image_mean, t.image_std, t.size_divisible
        )
    model.skipped_keys = []
    if cfg.pretrained and load_weights:
        model.skipped_keys = load_starting_weights(model, cfg.weights)
    return model


def _resnet50_v2(
    cfg: TrainConfig, n_classes: int, anchors: AnchorGenerator, common: dict[str, Any]
) -> MaskRCNN:
    """torchvision's Mask R-CNN v2 (ResNet-50-FPN) with our anchors and numbers."""
    model = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None, num_classes=n_classes, **common
    )
    model.rpn.anchor_generator = anchors  # the v2 builder sets its own
    n_anchors = anchors.num_anchors_per_location()[0]
    if model.rpn.head.cls_logits.out_channels != n_anchors:
        from torchvision.models.detection.rpn import RPNHead

        model.rpn.head = RPNHead(model.backbone.out_channels, n_anchors, conv_depth=2)
    if cfg.use_frozen_bn:  # the v2 builder picks trainable BN for random weights
        _freeze_bn(model.backbone.body)
    if cfg.pretrained:
        _freeze_stages(model.backbone.body, cfg.trainable_layers)
    if cfg.stride_in_1x1:
        set_stride_in_1x1(model.backbone.body)
    return model


def _resnet_fpn(
    cfg: TrainConfig, n_classes: int, anchors: AnchorGenerator, common: dict[str, Any]
) -> MaskRCNN:
    """Mask R-CNN on a ResNet-18/34/101 FPN backbone with the config's head sizes."""
    norm = FrozenBatchNorm2d if cfg.use_frozen_bn else nn.BatchNorm2d
    body = getattr(torchvision.models, cfg.backbone)(weights=None, norm_layer=norm)
    if cfg.stride_in_1x1:
        set_stride_in_1x1(body)
    if cfg.pretrained:
        _freeze_stages(body, cfg.trainable_layers)
    c = 512 if cfg.backbone in ("resnet18", "resnet34") else 2048
    fpn_ch, rep, layers = cfg.fpn_channels, cfg.box_head_dim, cfg.mask_head_layers
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[c // 8, c // 4, c // 2, c],
        out_channels=fpn_ch,
        extra_blocks=LastLevelMaxPool(),
    )
    return MaskRCNN(
        backbone,
        box_head=TwoMLPHead(fpn_ch * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, n_classes),
        mask_head=MaskRCNNHeads(fpn_ch, layers, 1),
        mask_predictor=MaskRCNNPredictor(layers[-1], layers[-1], n_classes),
        rpn_anchor_generator=anchors,
        **common,
    )


def _freeze_stages(body: nn.Module, trainable_layers: int) -> None:
    """Train only the last ``trainable_layers`` ResNet stages (torchvision's convention)."""
    stages = ["layer4", "layer3", "layer2", "layer1", "conv1"][: max(0, trainable_layers)]
    if "conv1" in stages:
        stages.append("bn1")
    for pname, p in body.named_parameters():
        if not any(pname.startswith(s) for s in stages):
            p.requires_grad_(False)


def _freeze_bn(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_bn(child)


def save_checkpoint(path: str | os.PathLike, **fields: Any) -> Path:
    """Write our checkpoint dict atomically (temporary file, then ``os.replace``).

    ``fields`` usually hold model, optimizer, scheduler (state dicts), epoch, config,
    metrics, rng; the format marker is added. A :class:`TrainConfig` is stored as its plain
    dict, so that ``torch.load(weights_only=True)`` reads the file back.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    if isinstance(fields.get("config"), TrainConfig):
        fields["config"] = fields["config"].to_dict()
    data = {CHECKPOINT_FORMAT[0]: CHECKPOINT_FORMAT[1], **fields}
    try:
        with open(tmp, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        os.replace(tmp, p)
        _fsync_dir(p.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def config_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint"):
    """The :class:`TrainConfig` stored in one of our checkpoints (CheckpointError if invalid)."""
    try:
        return as_config(ckpt["config"])
    except ValueError as e:
        raise CheckpointError(f"{path}: the checkpoint's configuration is not valid ({e})") from e


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, Any]:
    """Read one of our checkpoints (``weights_only=True``); CheckpointError otherwise."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        # one plain sentence; torch's own text (about weights_only, "file an issue") is
        # kept in the exception chain for a developer, not shown to the user
        raise CheckpointError(
            f"{p}: cannot be read as a checkpoint (damaged, cut short, or not a PyTorch "
            "file); choose the best.pt or last.pt that 'napari-vertebra train' wrote"
        ) from e
    if not isinstance(obj, dict) or CHECKPOINT_FORMAT[0] not in obj:
        raise CheckpointError(
            f"{p}: not a napari-vertebra checkpoint (a plain state dict or another tool's "
            "file); use it as starting weights with 'weights: PATH' in the config instead"
        )
    if obj[CHECKPOINT_FORMAT[0]] > CHECKPOINT_FORMAT[1]:
        raise CheckpointError(f"{p}: checkpoint format {obj[CHECKPOINT_FORMAT[0]]} is newer")
    for key in ("model", "config"):
        if key not in obj:
            raise CheckpointError(f"{p}: checkpoint has no {key!r} entry")
    return obj


def model_from_checkpoint(
    path: str | os.PathLike, map_location: str = "cpu"
) -> tuple[MaskRCNN, dict[str, Any]]:
    """(model in eval mode, checkpoint dict) from one of our checkpoints."""
    ckpt = load_checkpoint(path, map_location)
    cfg = config_from_checkpoint(ckpt, path)
    model = build_model(cfg, load_weights=False)  # the checkpoint holds every weight
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model in its config ({e})") from e
    model.eval()
    return model, ckpt
