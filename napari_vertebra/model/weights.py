"""Starting weights: COCO Mask R-CNN or ImageNet ResNet files into our Mask R-CNN.

Three kinds of file are read (nothing is ever downloaded):

- torchvision state dicts: a COCO ``maskrcnn_resnet50_fpn_v2`` (or v1) file, an ImageNet
  ResNet file, a torchvision reference-script checkpoint or one of ours;
- detectron2 model-zoo files (``model_final_*.pkl``: a pickle of ``{"model": {name:
  numpy array}, "__author__": ...}``, read with a restricted unpickler that accepts only
  numpy arrays) and detectron2 ``.pth`` checkpoints, whose names are converted to
  torchvision's (:func:`detectron2_to_torchvision`);
- nothing else: Caffe2 / Detectron1 pickles are refused.

Every backbone and FPN tensor of the model must come from the file (an ImageNet file
has no FPN: then the ResNet body must be complete), and the file must not hold backbone
or FPN tensors the model lacks (a ResNet-101 file into a ResNet-50, a v1 FPN into a v2
one): otherwise :class:`CheckpointError` lists them, unless ``allow_partial=True``, which
loads what fits with a warning. Class-specific heads (COCO's 81 or 91 classes, ours 18)
are never loaded; other heads that do not fit are loaded where they can and listed in a
warning. See docs/transfer.md.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN

__all__ = [
    "DETECTRON2_PIXEL_MEAN_BGR",
    "DETECTRON2_PIXEL_STD_BGR",
    "detectron2_to_torchvision",
    "has_stride_in_1x1",
    "load_starting_weights",
    "read_weights",
    "set_stride_in_1x1",
]

log = logging.getLogger(__name__)

#: Parameters of the class-specific layers (torchvision names, and an ImageNet
#: classifier's ``fc``): never loaded.
CLASS_HEADS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.", "fc.")
#: detectron2's defaults for MSRA / model-zoo R-50/R-101 models: BGR, 0..255, std 1.
DETECTRON2_PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
DETECTRON2_PIXEL_STD_BGR = (1.0, 1.0, 1.0)
_DOWNLOAD_HINT = {
    "model_final_a3ec72.pkl": "https://dl.fbaipublicfiles.com/detectron2/"
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x/138205316/model_final_a3ec72.pkl",
    "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth": "https://download.pytorch.org/models/"
    "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
}


def _checkpoint_error(msg: str) -> Exception:
    from .build import CheckpointError  # lazy: build imports this module

    return CheckpointError(msg)


# ---------------------------------------------------------------------------- reading


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds dicts, lists, numbers, strings and numpy arrays only."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("collections", "OrderedDict"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]
        return getattr(importlib.import_module(module), name)


def _read_pickle(p: Path) -> Any:
    with open(p, "rb") as f:
        return _NumpyOnlyUnpickler(f, encoding="latin1").load()


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict of tensors, metadata) from a weights file of any supported kind.

    Metadata: ``format`` ("torchvision", "detectron2" or "ours") and, for detectron2
    files that store them, ``pixel_mean`` / ``pixel_std``.
    """
    from .build import CHECKPOINT_FORMAT

    p = Path(path)
    if not p.is_file():
        hint = _DOWNLOAD_HINT.get(p.name)
        where = f"; download it from {hint} and put it there" if hint else ""
        raise _checkpoint_error(
            f"{p}: weights file not found{where} (or train from random weights: weights=null)"
        )
    obj = None
    if not zipfile.is_zipfile(p):  # torch.save writes zip files; detectron2 plain pickles
        try:
            obj = _read_pickle(p)
        except Exception:
            obj = None
    if not isinstance(obj, dict):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise _checkpoint_error(
                f"{p}: cannot be read as weights (damaged, cut short, or neither a PyTorch "
                "nor a detectron2 file)"
            ) from e
    meta: dict[str, Any] = {"format": "torchvision"}
    if isinstance(obj, dict) and obj.get(CHECKPOINT_FORMAT[0]):
        obj, meta["format"] = obj["model"], "ours"
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # detectron2 model zoo, torchvision reference scripts
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "blobs" in obj:
        raise _checkpoint_error(
            f"{p}: a Caffe2 / Detectron1 file; convert it with detectron2 first or use a "
            "detectron2 model-zoo file (model_final_*.pkl)"
        )
    if not isinstance(obj, dict) or not obj:
        raise _checkpoint_error(f"{p}: not a state dict of tensors")
    state: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not torch.is_tensor(v) or not isinstance(k, str):
            raise _checkpoint_error(f"{p}: not a state dict of tensors ({k!r})")
        k = k[7:] if k.startswith("module.") else k
        state[k] = v
    if any(k.startswith(("backbone.bottom_up.", "proposal_generator.")) for k in state):
        meta["format"] = "detectron2"
        for name in ("pixel_mean", "pixel_std"):
            if name in state:
                meta[name] = tuple(float(x) for x in state.pop(name).flatten())
    return state, meta


# ------------------------------------------------------------------ detectron2 names

_D2_BLOCK = re.compile(r"backbone\.bottom_up\.res(\d)\.(\d+)\.(conv[123]|shortcut)\.(.+)$")
_D2_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (detectron2 regex, torchvision candidates; the first in the model is used)
    (r"backbone\.bottom_up\.stem\.conv1\.weight$", ("backbone.body.conv1.weight",)),
    (r"backbone\.bottom_up\.stem\.conv1\.norm\.(\w+)$", ("backbone.body.bn1.{0}",)),
    (
        r"backbone\.fpn_lateral([2-5])\.(weight|bias)$",
        ("backbone.fpn.inner_blocks.{L}.0.{1}", "backbone.fpn.inner_blocks.{L}.{1}"),
    ),
    (
        r"backbone\.fpn_output([2-5])\.(weight|bias)$",
        ("backbone.fpn.layer_blocks.{L}.0.{1}", "backbone.fpn.layer_blocks.{L}.{1}"),
    ),
    (
        r"proposal_generator\.rpn_head\.conv\.(weight|bias)$",
        ("rpn.head.conv.0.0.{0}", "rpn.head.conv.{0}"),
    ),
    (r"proposal_generator\.rpn_head\.objectness_logits\.(\w+)$", ("rpn.head.cls_logits.{0}",)),
    (r"proposal_generator\.rpn_head\.anchor_deltas\.(\w+)$", ("rpn.head.bbox_pred.{0}",)),
    (r"roi_heads\.box_head\.fc1\.(\w+)$", ("roi_heads.box_head.fc6.{0}",)),
    (r"roi_heads\.box_head\.fc2\.(\w+)$", ("roi_heads.box_head.fc7.{0}",)),
    (r"roi_heads\.box_predictor\.cls_score\.(\w+)$", ("roi_heads.box_predictor.cls_score.{0}",)),
    (r"roi_heads\.box_predictor\.bbox_pred\.(\w+)$", ("roi_heads.box_predictor.bbox_pred.{0}",)),
    (
        r"roi_heads\.mask_head\.mask_fcn([1-9])\.(weight|bias)$",
        ("roi_heads.mask_head.{M}.0.{1}", "roi_heads.mask_head.mask_fcn{0}.{1}"),
    ),
    (r"roi_heads\.mask_head\.deconv\.(\w+)$", ("roi_heads.mask_predictor.conv5_mask.{0}",)),
    (
        r"roi_heads\.mask_head\.predictor\.(\w+)$",
        ("roi_heads.mask_predictor.mask_fcn_logits.{0}",),
    ),
)


def _d2_candidates(key: str) -> tuple[str, ...] | None:
    m = _D2_BLOCK.match(key)
    if m:  # res{s}.{b}.conv{j}[.norm].X -> layer{s-1}.{b}.conv{j} / bn{j} / downsample
        stage, block, conv, rest = m.groups()
        base = f"backbone.body.layer{int(stage) - 1}.{block}."
        norm = rest.startswith("norm.")
        leaf = rest[5:] if norm else rest
        if conv == "shortcut":
            return (base + ("downsample.1." if norm else "downsample.0.") + leaf,)
        return (base + (f"bn{conv[-1]}." if norm else f"{conv}.") + leaf,)
    for pattern, targets in _D2_RULES:
        m = re.match(pattern, key)
        if m:
            g = m.groups()
            extra = {}
            if "fpn_" in pattern:
                extra["L"] = int(g[0]) - 2  # p2..p5 -> blocks 0..3
            if "mask_fcn" in pattern:
                extra["M"] = int(g[0]) - 1
            return tuple(t.format(*g, **extra) for t in targets)
    return None


def detectron2_to_torchvision(
    state: Mapping[str, torch.Tensor],
    own_keys: set[str] | Mapping[str, Any],
    pixel_mean_bgr: tuple[float, ...] = DETECTRON2_PIXEL_MEAN_BGR,
    pixel_std_bgr: tuple[float, ...] = DETECTRON2_PIXEL_STD_BGR,
    image_mean_rgb: tuple[float, ...] = (0.485, 0.456, 0.406),
    image_std_rgb: tuple[float, ...] = (0.229, 0.224, 0.225),
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a detectron2 Mask R-CNN R-FPN state dict to torchvision's key names.

    ``own_keys``: the model's state-dict keys (where torchvision has two spellings, the
    model's is used). The first convolution is adapted to torchvision's input: its
    input channels are reversed (BGR -> RGB) and scaled so that a normalised RGB image
    ``(x - image_mean) / image_std`` (``x`` in 0..1) gives what detectron2 computes
    from ``(255 x_bgr - pixel_mean) / pixel_std``; the constant that remains is folded
    into the stem's norm ``running_mean`` (zero for detectron2's default mean, which is
    255 x ImageNet's). Returns (converted state dict, detectron2 keys with no
    torchvision name).
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if "anchor_generator.cell_anchors" in key:
            continue  # not parameters: rebuilt from the config
        candidates = _d2_candidates(key)
        if candidates is None:
            unknown.append(key)
            continue
        target = next((c for c in candidates if c in own_keys), candidates[0])
        out[target] = value
    conv = out.get("backbone.body.conv1.weight")
    if conv is not None and conv.ndim == 4 and conv.shape[1] == 3:
        w = conv.double()  # (out, in_bgr, kh, kw)
        mean_bgr = torch.tensor(pixel_mean_bgr, dtype=torch.float64)
        std_bgr = torch.tensor(pixel_std_bgr, dtype=torch.float64)
        m_rgb = torch.tensor(image_mean_rgb, dtype=torch.float64)
        s_rgb = torch.tensor(image_std_rgb, dtype=torch.float64)
        w_rgb = w.flip(1)  # input channel r of ours is channel 2 - r of detectron2
        mean_rgb, std_rgb = mean_bgr.flip(0), std_bgr.flip(0)
        scale = 255.0 * s_rgb / std_rgb
        offset = (255.0 * m_rgb - mean_rgb) / std_rgb  # per input channel, interior
        out["backbone.body.conv1.weight"] = (w_rgb * scale[None, :, None, None]).to(conv.dtype)
        shift = (w_rgb * offset[None, :, None, None]).sum(dim=(1, 2, 3))
        rm = out.get("backbone.body.bn1.running_mean")
        if rm is not None and bool(shift.abs().max() > 0):
            out["backbone.body.bn1.running_mean"] = (rm.double() - shift).to(rm.dtype)
    return out, unknown


# ------------------------------------------------------------ stride in the 1x1 conv


def set_stride_in_1x1(body: nn.Module) -> nn.Module:
    """Move the stride of each stage's first bottleneck from the 3x3 to the 1x1 conv.

    torchvision's ResNet (v1.5) strides in ``conv2`` (3x3); MSRA's original ResNet,
    detectron2's model zoo and matterport's Keras Mask R-CNN stride in ``conv1`` (1x1).
    Same tensors, a different function: call this on a torchvision ResNet body that
    will hold such weights. Returns ``body`` (changed in place).
    """
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(body, name)[0]
        if not hasattr(block, "conv3"):
            raise ValueError("stride in the 1x1 convolution needs a bottleneck ResNet (50/101)")
        stride = block.conv2.stride
        if stride != (1, 1):
            block.conv1.stride, block.conv2.stride = stride, (1, 1)
    return body


def has_stride_in_1x1(body: nn.Module) -> bool:
    """True when the first block of layer2 strides in its 1x1 convolution."""
    block = getattr(body, "layer2", [None])[0]
    return block is not None and hasattr(block, "conv3") and block.conv1.stride != (1, 1)


# ------------------------------------------------------------------------- loading


def _map_torchvision(state: Mapping[str, torch.Tensor], own: Mapping[str, Any]):
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        key = k
        if key not in own and ("backbone.body." + key) in own:
            key = "backbone.body." + key  # a bare (ImageNet) ResNet
        elif not key.startswith(("backbone.", "rpn.", "roi_heads.")) and re.match(
            r"(conv1|bn1|layer\d)\.", key
        ):
            key = "backbone.body." + key  # bare ResNet key this model has not got
        out[key] = v
    return out


def _is_required(key: str, imagenet: bool) -> bool:
    if key.endswith("num_batches_tracked"):
        return False
    return key.startswith("backbone.body.") or (not imagenet and key.startswith("backbone."))


def _listing(keys: list[str], limit: int = 12) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_starting_weights(
    model: MaskRCNN, path: str | os.PathLike, *, allow_partial: bool = False
) -> list[str]:
    """Load a COCO Mask R-CNN or ImageNet ResNet file into ``model``; the skipped keys.

    Every backbone and FPN tensor must load (for an ImageNet file: every ResNet-body
    tensor), and the file must hold no backbone or FPN tensor the model lacks;
    otherwise :class:`~napari_vertebra.model.build.CheckpointError` lists them.
    ``allow_partial=True`` loads what fits and logs a warning instead. Class-specific
    heads are skipped (logged); other heads that do not fit are skipped with a warning.
    Returns the skipped keys as ``"key (reason)"``.
    """
    state, meta = read_weights(path)
    own = model.state_dict()
    detectron2 = meta["format"] == "detectron2"
    unknown: list[str] = []
    if detectron2:
        mean = meta.get("pixel_mean", DETECTRON2_PIXEL_MEAN_BGR)
        std = meta.get("pixel_std", DETECTRON2_PIXEL_STD_BGR)
        kw = {}
        if hasattr(model, "transform"):
            kw = {
                "image_mean_rgb": tuple(model.transform.image_mean),
                "image_std_rgb": tuple(model.transform.image_std),
            }
        state, unknown = detectron2_to_torchvision(state, own, mean, std, **kw)
    else:
        state = _map_torchvision(state, own)
    imagenet = not any(k.startswith(("backbone.fpn.", "rpn.", "roi_heads.")) for k in state)
    # our own checkpoints (fine-tuning) keep their class heads when the class set fits
    fit = _sort_tensors(state, own, keep_class_heads=meta["format"] == "ours")
    fit.skipped[:0] = [f"{k} (not a Mask R-CNN tensor)" for k in unknown]
    if not fit.mapped:
        raise _checkpoint_error(
            f"{path}: no weight matches a {type(model).__name__} with this backbone"
        )
    missing = [k for k in own if _is_required(k, imagenet) and k not in fit.mapped]
    problems = fit.bad_backbone + [f"{k} (missing from the file)" for k in missing]
    if problems:
        msg = (
            f"{path}: {len(problems)} backbone/FPN tensors do not fit this model "
            f"({_listing(problems)}); the file is for another backbone or architecture: "
            "choose the matching 'backbone' in the config"
        )
        if not allow_partial:
            raise _checkpoint_error(msg + " (or allow a partial start explicitly)")
        log.warning("PARTIAL START, these layers begin from random values: %s", msg)
    model.load_state_dict(fit.mapped, strict=False)
    kind = "detectron2" if detectron2 else ("ImageNet" if imagenet else meta["format"])
    _log_loaded(model, path, fit, kind, imagenet)
    return fit.skipped


@dataclass
class _Fit:
    """The tensors of a weights file sorted against a model's own (:func:`_sort_tensors`)."""

    mapped: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    bad_backbone: list[str] = field(default_factory=list)  # in the file, not usable
    class_heads: list[str] = field(default_factory=list)
    other_heads: list[str] = field(default_factory=list)


def _sort_tensors(
    state: Mapping[str, torch.Tensor], own: Mapping[str, Any], keep_class_heads: bool = False
) -> _Fit:
    """Which tensors of ``state`` load into a model with state dict ``own`` (in its
    dtype), and why the others are skipped. Class-specific heads are skipped unless
    ``keep_class_heads`` and their shape fits (the same classes)."""
    fit = _Fit()
    for key, v in state.items():
        same = key in own and own[key].shape == v.shape
        if key.startswith(CLASS_HEADS) and not (keep_class_heads and same):
            fit.class_heads.append(key)
            fit.skipped.append(f"{key} (class-specific head)")
        elif key not in own:
            reason = f"{key} (not in this model)"
            fit.skipped.append(reason)
            if _is_required(key, False):
                fit.bad_backbone.append(reason)
            elif key.startswith(("rpn.", "roi_heads.")):
                fit.other_heads.append(reason)
        elif own[key].shape != v.shape:
            reason = f"{key} (shape {tuple(v.shape)} != {tuple(own[key].shape)})"
            fit.skipped.append(reason)
            (fit.bad_backbone if _is_required(key, False) else fit.other_heads).append(reason)
        else:
            fit.mapped[key] = v.to(own[key].dtype)
    return fit


def _log_loaded(
    model: MaskRCNN, path: str | os.PathLike, fit: _Fit, kind: str, imagenet: bool
) -> None:
    """Log what was loaded, what was not as expected, and what did not fit."""
    log.info("loaded %d tensors (%s file) from %s", len(fit.mapped), kind, path)
    if fit.class_heads:
        log.info(
            "not loaded, as expected: %d class-specific head tensors (%s): the file's "
            "classes are not our 18",
            len(fit.class_heads),
            _listing(fit.class_heads, 4),
        )
    if imagenet:
        log.info("an ImageNet backbone file: the FPN, RPN and heads start from random values")
    if fit.other_heads:
        log.warning(
            "%d head tensors of %s do not fit and start from random values: %s",
            len(fit.other_heads),
            path,
            _listing(fit.other_heads),
        )
    body = getattr(getattr(model, "backbone", None), "body", None)
    if kind == "detectron2" and body is not None and not has_stride_in_1x1(body):
        log.warning(
            "%s: detectron2 ResNets stride in the 1x1 convolution, this model in the 3x3 "
            "one (torchvision): the weights load but compute a different function until "
            "fine-tuned; build the model with stride_in_1x1 (docs/transfer.md)",
            path,
        )
