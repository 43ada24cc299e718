"""Model and training configuration: :class:`TrainConfig`, YAML loading, overrides (no torch).

A configuration is a frozen :class:`TrainConfig`; YAML files give a subset of its keys
and the rest keep their defaults (the paper's setup). Unknown keys and values out of
range are errors naming the file and the key (a typo should not silently train the
wrong model). Command-line overrides use ``key=value`` with YAML-parsed values.

The shipped configurations (``paper``, ``smoke``, ``synth-r50``) are package data
(``napari_vertebra/configs/*.yaml``) and can be named instead of a path:
``napari-vertebra train --config paper``. See docs/training.md for every key.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from napari_vertebra.core.labels import CLASS_SETS

__all__ = [
    "BACKBONES",
    "BEST_METRICS",
    "DEFAULTS",
    "RESUME_MUTABLE",
    "TrainConfig",
    "add_train_arguments",
    "as_config",
    "config_path",
    "load_config",
    "parse_overrides",
    "read_yaml_keys",
    "shipped_configs",
]

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
#: Validation metrics ``best_metric`` can name (all: higher is better).
BEST_METRICS = ("id_rate", "mask_mAP", "box_mAP", "mask_mAP50", "box_mAP50")

#: Keys that may change when a run is resumed (the rest define the model, the data
#: order or the optimisation and must match the checkpoint's).
RESUME_MUTABLE = frozenset(
    {
        "epochs",
        "lr",
        "workers",
        "grad_clip",
        "amp",
        "val_max_images",
        "best_metric",
        # inference only
        "min_score",
        "level_evidence_weight",
        "level_class_prior",
        "dedup_box_iou",
        "box_score_thresh",
        "rpn_pre_nms_top_n_test",
        "rpn_post_nms_top_n_test",
        "box_detections_per_img",
    }
)


def _spec(
    default: Any,
    kind: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    choices: tuple[str, ...] = (),
    optional: bool = False,
    empty: bool = False,
) -> Any:
    """A :class:`TrainConfig` field whose value :func:`_check` validates.

    ``kind``: ``int``, ``float``, ``bool``, ``choice`` (one of ``choices``, any case),
    ``path``, ``ints`` / ``floats`` (a list), ``int_or_ints``; numbers lie in
    [``lo``, ``hi``]; ``optional``: None is allowed; ``empty``: an empty list is."""
    meta = {"kind": kind, "lo": lo, "hi": hi, "choices": choices, "optional": optional}
    return field(default=default, metadata={**meta, "empty": empty})


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of the model, its training and its inference (the paper's defaults).

    Frozen; build variants with :meth:`replace`, read the plain dict with
    :meth:`to_dict`. Each field's bounds or choices sit in its metadata (:func:`_spec`)
    and are checked on construction; list values are stored as tuples.
    """

    # ----- model
    #: resnet18 | resnet34 | resnet50 (torchvision's Mask R-CNN v2) | resnet101
    backbone: str = _spec("resnet101", "choice", choices=BACKBONES)
    #: local starting-weights file (COCO Mask R-CNN or ImageNet ResNet state dict)
    weights: str | None = _spec(None, "path", optional=True)
    #: FrozenBatchNorm in the backbone; None: frozen with starting weights, trainable without
    frozen_bn: bool | None = _spec(None, "bool", optional=True)
    #: backbone stages trained when starting from weights (0..5, torchvision's convention)
    trainable_layers: int = _spec(3, "int", 0, 5)
    #: stride 2 in each ResNet stage's first 1x1 conv (detectron2 / MSRA weights) instead of
    #: its 3x3 conv (torchvision); set it when starting from detectron2's COCO R101 file
    stride_in_1x1: bool = _spec(False, "bool")
    #: the classes the model learns and predicts: "paper" (T1..L5) or "extended" (adds the
    #: landmarks C7 and S1 and the transitional T13 and L6); see docs/levels.md
    class_set: str = _spec("paper", "choice", choices=tuple(CLASS_SETS))
    #: fixed physical scale: the model sees every MIP (1 mm per pixel) at this many pixels
    #: per mm, whatever its field of view, in training, validation and prediction; images
    #: larger than ``max_size`` at that scale are cropped (training) or tiled (prediction),
    #: never squeezed (docs/model.md). None: torchvision's resizing, the short side to
    #: ``min_size`` (a vertebra's pixel size then depends on the field of view)
    pixels_per_mm: float | None = _spec(None, "float", 0.05, 20, optional=True)
    #: GeneralizedRCNNTransform min_size (px); a list trains multi-scale (inference: the
    #: last). Unused with ``pixels_per_mm``
    min_size: int | tuple[int, ...] = _spec(1024, "int_or_ints", 16)
    #: the longest side (px) the model sees: torchvision's cap, or with ``pixels_per_mm``
    #: the tile / crop size
    max_size: int = _spec(1024, "int", 16)
    #: anchor size per FPN level (px at the input scale), 5 values
    anchor_sizes: tuple[int, ...] = _spec((24, 48, 96, 192, 384), "ints", 1)
    #: anchor height / width
    aspect_ratios: tuple[float, ...] = _spec((0.5, 1.0, 2.0), "floats", 1e-6)
    fpn_channels: int = _spec(256, "int", 1)
    box_head_dim: int = _spec(1024, "int", 1)
    mask_head_layers: tuple[int, ...] = _spec((256, 256, 256, 256), "ints", 1)
    rpn_pre_nms_top_n_train: int = _spec(600, "int", 1)
    rpn_post_nms_top_n_train: int = _spec(300, "int", 1)
    rpn_pre_nms_top_n_test: int = _spec(300, "int", 1)
    rpn_post_nms_top_n_test: int = _spec(100, "int", 1)
    rpn_batch_size_per_image: int = _spec(128, "int", 1)
    box_batch_size_per_image: int = _spec(128, "int", 1)
    box_positive_fraction: float = _spec(0.25, "float", 1e-6, 1)
    #: detections kept by the box stage (a vertebra comes once per likely class)
    box_detections_per_img: int = _spec(100, "int", 1)
    box_score_thresh: float = _spec(0.05, "float", 0, 1)
    #: the paper's minimum confidence of a prediction
    min_score: float = _spec(0.9, "float", 0, 1)
    #: weight of the class evidence in the joint level decoding (model/levels.py): below 1
    #: because one image's detections share one bias; 0.5 named within 0.01 of 1.0 or better
    #: and called fewer wrong namings certain in every benchmarks/partial_views.py run
    level_evidence_weight: float = _spec(0.5, "float", 0.01, 10)
    #: divide the class evidence by each class's share of the training vertebrae (stored
    #: in the checkpoint) before the level decoding, so that a level rare in training
    #: (T13, L6) is weighed by the spine-variant prior alone, not twice (model/levels.py)
    level_class_prior: bool = _spec(True, "bool")
    #: class-agnostic box IoU above which a lower-scored detection is a duplicate (None:
    #: mask overlap only)
    dedup_box_iou: float | None = _spec(0.5, "float", 0, 1, optional=True)
    #: the model sees clip(HU / hu_max, 0, 1) replicated to 3 channels
    hu_max: float = _spec(1500.0, "float", 1e-6)
    #: SyncBatchNorm across GPUs for trainable BatchNorm layers (DDP on CUDA only)
    sync_bn: bool = _spec(False, "bool")
    # ----- training
    epochs: int = _spec(24, "int", 0)
    #: images per GPU (per process); the global batch is batch_size x number of processes
    batch_size: int = _spec(5, "int", 1)
    optimizer: str = _spec("sgd", "choice", choices=("sgd", "adamw"))
    #: learning rate for a global batch of ``batch_size`` images (one process); see lr_scaling
    lr: float = _spec(0.001, "float", 0)
    #: "linear": lr x number of processes (the global batch grows with them); "none": as given
    lr_scaling: str = _spec("linear", "choice", choices=("linear", "none"))
    momentum: float = _spec(0.9, "float", 0, 1)
    weight_decay: float = _spec(1e-4, "float", 0)
    #: weight decay of normalisation layers and of every bias (torchvision's
    #: norm_weight_decay); None: weight_decay
    norm_weight_decay: float | None = _spec(0.0, "float", 0, optional=True)
    lr_schedule: str = _spec("multistep", "choice", choices=("multistep", "cosine", "constant"))
    #: epochs at which the rate drops by ``lr_gamma`` (multistep)
    lr_steps: tuple[int, ...] = _spec((16, 22), "ints", 0, empty=True)
    lr_gamma: float = _spec(0.1, "float", 0)
    warmup_iters: int = _spec(100, "int", 0)
    grad_clip: float | None = _spec(10.0, "float", 0, optional=True)
    workers: int = _spec(2, "int", 0)
    seed: int = _spec(0, "int", 0)
    #: mixed precision (CUDA only)
    amp: bool = _spec(True, "bool")
    #: cap on optimizer steps per epoch (smoke runs)
    max_steps_per_epoch: int | None = _spec(None, "int", 1, optional=True)
    val_max_images: int | None = _spec(None, "int", 1, optional=True)
    #: validation metric that chooses best.pt (higher is better)
    best_metric: str = _spec("id_rate", "choice", choices=BEST_METRICS)
    #: batches hold images of similar height/width (torchvision's aspect-ratio grouping);
    #: bins per doubling of the ratio, -1: off
    aspect_ratio_group_factor: int = _spec(2, "int", -1, 8)
    # ----- augmentation (anatomy-respecting: never flipped)
    aug_intensity: float = _spec(0.15, "float", 0, 1)
    aug_contrast: float = _spec(0.2, "float", 0, 0.99)
    aug_noise: float = _spec(0.02, "float", 0, 1)
    aug_rotate_deg: float = _spec(5.0, "float", 0, 180)
    aug_scale: float = _spec(0.1, "float", 0, 0.9)
    aug_partial_prob: float = _spec(0.3, "float", 0, 1)
    aug_min_rows: float = _spec(0.4, "float", 1e-6, 1)
    aug_min_visible: float = _spec(0.5, "float", 0, 1)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _check(f, getattr(self, f.name)))
        if len(self.anchor_sizes) != 5:
            raise ValueError(
                f"anchor_sizes needs 5 values (one per FPN level); got {len(self.anchor_sizes)}"
            )
        if self.stride_in_1x1 and self.backbone not in ("resnet50", "resnet101"):
            raise ValueError(
                f"stride_in_1x1 needs a bottleneck ResNet (resnet50, resnet101); "
                f"backbone is {self.backbone}"
            )

    # ----- construction and output
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "configuration") -> TrainConfig:
        """Build from a mapping; unknown keys and bad values raise ValueError naming ``where``."""
        data = dict(data)
        unknown = sorted(set(data) - set(DEFAULTS))
        if unknown:
            raise ValueError(
                f"{where}: unknown configuration keys {unknown} (see docs/training.md)"
            )
        try:
            return cls(**data)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        unknown = sorted(set(changes) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready dict (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def to_yaml(self) -> str:
        """The configuration as YAML text (every key)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def pretrained(self) -> bool:
        """True when the model starts from a weights file (frozen stages apply)."""
        return self.weights is not None

    @property
    def use_frozen_bn(self) -> bool:
        """The resolved ``frozen_bn`` (None: frozen exactly when starting from weights)."""
        return self.pretrained if self.frozen_bn is None else bool(self.frozen_bn)


def _number(key: str, v: Any, integer: bool, lo, hi) -> int | float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key} must be a number; got {v!r}")
    if integer:
        if isinstance(v, float) and not v.is_integer():
            raise ValueError(f"{key} must be a whole number; got {v!r}")
        v = int(v)
    else:
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"{key} must be finite; got {v!r}")
    if lo is not None and v < lo:
        raise ValueError(f"{key} must be at least {lo}; got {v!r}")
    if hi is not None and v > hi:
        raise ValueError(f"{key} must be at most {hi}; got {v!r}")
    return v


def _check(f: Field, v: Any) -> Any:
    """The value of field ``f`` validated against its metadata (:func:`_spec`) and
    normalised: tuples, ints, floats, lower-case choices."""
    key, m = f.name, f.metadata
    kind, lo, hi = m["kind"], m["lo"], m["hi"]
    if v is None and m["optional"]:
        return None
    if kind == "choice":
        if not isinstance(v, str) or v.lower() not in m["choices"]:
            raise ValueError(f"{key} must be one of {list(m['choices'])}; got {v!r}")
        return v.lower()
    if kind == "path":
        if v == "":
            return None
        if not isinstance(v, (str, os.PathLike)):
            raise ValueError(f"{key} must be a file path or null; got {v!r}")
        return str(v)
    if kind == "bool":
        if not isinstance(v, bool):
            either = "true, false or null" if m["optional"] else "true or false"
            raise ValueError(f"{key} must be {either}; got {v!r}")
        return v
    if kind in ("int", "float"):
        return _number(key, v, kind == "int", lo, hi)
    if kind == "int_or_ints" and not isinstance(v, (list, tuple)):
        return _number(key, v, True, lo, hi)
    if not isinstance(v, (list, tuple)) or (not v and not m["empty"]):
        raise ValueError(f"{key} must be a non-empty list of numbers; got {v!r}")
    integer = kind in ("ints", "int_or_ints")
    return tuple(_number(key, x, integer, lo, hi) for x in v)


#: Every configuration key with its default (the paper's setup: ResNet-101-FPN, 1024 px).
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainConfig)}


# ----------------------------------------------------------------- shipped configurations
def shipped_configs() -> dict[str, Path]:
    """{name: path} of the configurations shipped in the package (``paper``, ``smoke``, ...)."""
    from importlib.resources import files

    folder = files("napari_vertebra") / "configs"
    out = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            out[entry.name[: -len(".yaml")]] = Path(str(entry))
    return out


def config_path(name_or_path: str | os.PathLike) -> Path:
    """The YAML file of ``name_or_path``: an existing file, or a shipped configuration's
    name (``paper``, ``smoke``, ``synth-r50``, with or without ``.yaml``)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    shipped = shipped_configs()
    name = p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name
    if str(name_or_path) in (name, f"{name}.yaml") and name in shipped:
        return shipped[name]
    raise ValueError(
        f"{name_or_path}: no such configuration file, and no shipped configuration of that "
        f"name (shipped: {', '.join(shipped)})"
    )


def read_yaml_keys(path: str | os.PathLike) -> dict[str, Any]:
    """The keys a YAML configuration file (or shipped name) sets, unvalidated."""
    p = config_path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML ({e})") from e
    except OSError as e:
        raise ValueError(f"{p}: cannot read the configuration ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of configuration keys")
    return data


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["lr=0.01", "backbone=resnet50"]`` -> {key: YAML-parsed value}."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. lr=0.002)")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({e})") from e
    return out


def load_config(
    path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Defaults updated with the YAML file (or shipped name) ``path``, then ``overrides``."""
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        p = config_path(path)
        where = str(p)
        data = read_yaml_keys(p)
        TrainConfig.from_dict(data, where)  # errors name the file
    if overrides:
        data.update(overrides)
        where = f"{where} with overrides {sorted(overrides)}"
    return TrainConfig.from_dict(data, where)


def as_config(config: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
    """A :class:`TrainConfig` from one, a (partial) mapping of keys, or None (defaults)."""
    if isinstance(config, TrainConfig):
        return config
    return TrainConfig.from_dict(config or {})


def _represent(dumper: yaml.SafeDumper, cfg: TrainConfig) -> yaml.Node:
    return dumper.represent_dict(cfg.to_dict())


yaml.SafeDumper.add_representer(TrainConfig, _represent)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The training options (shared by ``napari-vertebra train`` and training/train.py)."""
    parser.add_argument(
        "--config",
        help="YAML configuration: a file, or a shipped name (paper, smoke, synth-r50)",
    )
    parser.add_argument("--data", required=True, help="folder with train/ and val/ COCO splits")
    parser.add_argument("-o", "--output", required=True, help="run folder")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from RUN/last.pt with its configuration; --config and KEY=VALUE "
        "may change only epochs, lr and a few others (see docs/training.md), else it stops "
        "with an error",
    )
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides the config)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--seed", type=int, help="random seed (overrides the config)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides, e.g. lr=0.01"
    )
    return parser
