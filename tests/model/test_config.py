"""TrainConfig: validation, shipped configurations, resume rules, optimizer groups, the
batch sampler and the cached dataset masks (fast: no training)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_vertebra.model.config import (
    DEFAULTS,
    RESUME_MUTABLE,
    TrainConfig,
    config_path,
    load_config,
    parse_overrides,
    shipped_configs,
)

MODEL_DIR = Path(__file__).resolve().parents[2] / "napari_vertebra" / "model"


def test_defaults_are_the_papers_and_every_key_is_typed():
    cfg = TrainConfig()
    assert cfg.backbone == "resnet101" and cfg.min_score == 0.9 and cfg.batch_size == 5
    assert set(DEFAULTS) == set(cfg.to_dict())
    assert isinstance(cfg.anchor_sizes, tuple)
    with pytest.raises(AttributeError):
        cfg.lr = 0.1  # frozen


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("lrr: 0.01\n", r"unknown configuration keys \['lrr'\]"),
        ("lr: -0.1\n", "lr must be at least 0"),
        ("trainable_layers: 7\n", "trainable_layers must be at most 5"),
        ("backbone: vgg16\n", "backbone must be one of"),
        ("epochs: 2.5\n", "epochs must be a whole number"),
        ("amp: maybe\n", "amp must be true or false"),
        ("anchor_sizes: [8, 16]\n", "anchor_sizes needs 5 values"),
        ("min_size: []\n", "min_size must be a non-empty list"),
        ("lr: [1, 2\n", "not valid YAML"),
        ("- lr\n", "expected a mapping"),
    ],
)
def test_bad_files_are_refused_naming_file_and_key(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match) as e:
        load_config(p)
    assert "bad.yaml" in str(e.value)


def test_overrides_are_validated():
    assert parse_overrides(["lr=0.002", "min_size=[96, 128]"]) == {
        "lr": 0.002,
        "min_size": [96, 128],
    }
    assert load_config(None, parse_overrides(["min_size=[96, 128]"])).min_size == (96, 128)
    with pytest.raises(ValueError, match="not key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        load_config(None, {"batch_size": 0})


def test_shipped_configs_by_name(tmp_path):
    shipped = shipped_configs()
    assert {"paper", "smoke", "synth-r50"} <= set(shipped)
    for name, path in shipped.items():
        cfg = load_config(name)
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for k, v in data.items():  # every key of the file is the loaded value
            assert getattr(cfg, k) == (tuple(v) if isinstance(v, list) else v), (name, k)
    assert config_path("paper.yaml") == shipped["paper"]
    with pytest.raises(ValueError, match=r"shipped: .*paper"):
        config_path("papr")
    # a file of that name in the working folder wins over the shipped one
    own = tmp_path / "paper"
    own.write_text("epochs: 3\n", encoding="utf-8")
    assert load_config(own).epochs == 3


def test_yaml_round_trip_and_plain_dict(tmp_path):
    cfg = load_config("smoke", {"lr": 0.0005})
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg), encoding="utf-8")  # a TrainConfig dumps as a mapping
    assert load_config(p) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["lr"] == cfg.lr == 0.0005 and "nope" not in cfg.to_dict()
    assert cfg.to_dict()["backbone"] == "resnet18"
    assert cfg.replace(epochs=1).epochs == 1
    with pytest.raises(ValueError, match="unknown"):
        cfg.replace(epoch=1)


def test_resume_rules():
    from napari_vertebra.model.resume import resume_config

    saved = load_config("smoke")
    same, changed = resume_config(saved, saved.to_dict())  # a full config that matches
    assert same == saved and changed == {}
    cfg, changed = resume_config(
        saved, {"lr": 0.002, "epochs": 12, "anchor_sizes": [24, 48, 96, 192, 384]}
    )
    assert cfg.lr == 0.002 and cfg.epochs == 12 and set(changed) == {"lr", "epochs"}
    with pytest.raises(ValueError, match=r"cannot change batch_size, seed when resuming") as e:
        resume_config(saved, {"batch_size": 3, "seed": 4, "lr": 0.1})
    assert "batch_size: 4 in the run, 3 given" in str(e.value)
    assert "seed: 0 in the run, 4 given" in str(e.value)
    assert {"epochs", "lr"} <= RESUME_MUTABLE and "backbone" not in RESUME_MUTABLE


def test_no_weight_decay_on_norms_and_biases():
    from napari_vertebra.model.build import build_model
    from napari_vertebra.model.optim import effective_lr, parameter_groups

    cfg = load_config("smoke", {"weight_decay": 0.01})
    model = build_model(cfg)
    decay, no_decay = parameter_groups(model, cfg)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert "backbone.body.bn1.weight" in nd and "backbone.body.conv1.weight" in d
    assert all(n.endswith(".bias") or ".bn" in n or "downsample.1" in n for n in nd)
    assert not any(n.endswith(".bias") for n in d)
    assert len(nd) + len(d) == sum(p.requires_grad for p in model.parameters())
    groups = parameter_groups(model, cfg.replace(norm_weight_decay=None))
    assert [g["weight_decay"] for g in groups] == [0.01, 0.01]
    # the learning-rate rule: lr is per batch_size images, scaled with the processes
    assert effective_lr(cfg, 8) == pytest.approx(8 * cfg.lr)
    assert effective_lr(cfg.replace(lr_scaling="none"), 8) == cfg.lr


class _Shapes(torch.utils.data.Dataset):
    """Stand-in for VertebraDataset in the sampler: only lengths and output shapes."""

    def __init__(self, shapes):
        self.shapes = shapes

    def __len__(self):
        return len(self.shapes)

    def output_shape(self, i, epoch=None):
        return self.shapes[i]


def test_batch_sampler_shards_groups_and_skips():
    from napari_vertebra.model.data import EpochBatchSampler, epoch_steps

    shapes = [(600, 140)] * 6 + [(200, 140)] * 5  # full columns and partial views
    ds = _Shapes(shapes)
    for world in (1, 2):
        seen = []
        for rank in range(world):
            s = EpochBatchSampler(ds, 2, seed=3, rank=rank, world=world)
            s.set_epoch(4)
            batches = [[i for i, e in b] for b in s]
            assert all(e == 4 for b in s for _, e in b)
            assert len(batches) == len(s) == epoch_steps(len(ds), 2, world)[0]
            # full batches of one aspect group first; at most one mixed batch of leftovers
            mixed = [b for b in batches if len({shapes[i] for i in b}) > 1]
            assert len(mixed) <= 1
            seen += [i for b in batches for i in b]
            # deterministic, and a resumed epoch leaves out the batches done
            s2 = EpochBatchSampler(ds, 2, seed=3, rank=rank, world=world)
            s2.set_epoch(4, skip=2)
            assert [[i for i, _ in b] for b in s2] == batches[2:] and len(s2) == len(s) - 2
        assert len(set(seen)) >= len(ds) - 2  # the ranks share the images out
    s = EpochBatchSampler(ds, 2, seed=3)
    assert s.batches(0) != s.batches(1)  # a new order each epoch


def test_dataset_caches_masks_and_takes_the_epoch_with_the_index(
    tiny_data, tiny_config, monkeypatch
):
    from napari_vertebra.annotation.polygons import rasterize
    from napari_vertebra.model import data
    from napari_vertebra.model.data import VertebraDataset

    cfg = tiny_config.replace(aug_partial_prob=0.5)
    ds = VertebraDataset(tiny_data / "train", cfg, train=True)

    def no_more(*a, **k):
        raise AssertionError("masks rasterised again")

    monkeypatch.setattr(data, "rasterize", no_more)  # samples come from the cache
    im = ds.images[1]
    cls, masks = ds.masks(1)
    ref = np.stack([rasterize(a.polygons, (im.height, im.width)) for a in im.annotations])
    assert np.array_equal(masks, ref) and len(cls) == len(im.annotations)
    for epoch in range(4):
        for i in range(len(ds)):
            x, _ = ds[(i, epoch)]
            assert tuple(x.shape[1:]) == ds.output_shape(i, epoch)
            ds.set_epoch(epoch)
            x2, _ = ds[i]
            assert torch.equal(x, x2)


def _module_imports(path: Path) -> set[str]:
    """Sibling modules imported at module level (``from .x import``), not in functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("napari_vertebra.model.")
        ):
            out.add(node.module.split(".")[2])
    return out


def test_model_modules_have_no_import_circle():
    graph = {p.stem: _module_imports(p) for p in MODEL_DIR.glob("*.py")}

    def visit(node, stack):
        assert node not in stack, " -> ".join([*stack, node])
        for nxt in graph.get(node, ()):
            visit(nxt, [*stack, node])

    for mod in graph:
        visit(mod, [])
    assert "train" not in graph["predict"]  # device choice lives in model.device


def test_docs_list_every_key_and_the_resume_rule():
    text = (MODEL_DIR.parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip(" `"): line.rstrip().endswith("| resume |")
        for line in text.splitlines()
        if line.startswith("| `")
    }
    for key in DEFAULTS:
        assert key in rows, key
        assert rows[key] == (key in RESUME_MUTABLE), key


def test_stride_in_1x1_is_part_of_the_model_and_of_the_paper_config():
    """detectron2's COCO R101 (the paper's start) strides in the 1x1 convolution: the
    config key rebuilds that backbone (also for a resumed run or a checkpoint), and a
    ResNet without bottlenecks refuses it."""
    from napari_vertebra.model.build import build_model
    from napari_vertebra.model.weights import has_stride_in_1x1

    paper = load_config("paper")
    assert paper.backbone == "resnet101" and paper.stride_in_1x1
    assert str(paper.weights).endswith(".pkl")  # detectron2's COCO file, see transfer.md
    tiny = {"fpn_channels": 16, "box_head_dim": 32, "mask_head_layers": [8]}
    on = build_model(load_config("synth-r50", {**tiny, "stride_in_1x1": True}))
    off = build_model(load_config("synth-r50", tiny))
    assert has_stride_in_1x1(on.backbone.body) and not has_stride_in_1x1(off.backbone.body)
    block = on.backbone.body.layer3[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    with pytest.raises(ValueError, match="bottleneck"):
        load_config("smoke", {"stride_in_1x1": True})
