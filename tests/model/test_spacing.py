"""A model at a fixed scale (config ``pixels_per_mm``) uses each image's recorded pixel
spacing, and refuses an image whose spacing it cannot know instead of taking it as 1 mm
(issue 19: synthetic images of about 1.8 mm per pixel were read as 1 mm)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vertebra.annotation.coco import read_coco, write_coco
from napari_vertebra.cli import main as cli_main
from napari_vertebra.model.build import build_model, save_checkpoint
from napari_vertebra.model.config import load_config
from napari_vertebra.model.data import VertebraDataset
from napari_vertebra.synth import synth_column, write_synth


@pytest.fixture()
def fixed(tiny_overrides):
    """A tiny model at 1 px per mm that sees 256 px at once."""
    return load_config(None, {**tiny_overrides, "pixels_per_mm": 1.0, "max_size": 256})


@pytest.fixture()
def fixed_checkpoint(fixed, tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(
        tmp_path / "fixed.pt", model=build_model(fixed).state_dict(), config=fixed.to_dict(),
        epoch=0,
    )  # fmt: skip


def test_training_resamples_a_recorded_spacing_to_1_mm(tmp_path, fixed):
    col = synth_column(np.random.default_rng(1), pixel_mm=2.0, name="c2mm")
    write_coco([col], tmp_path)
    ds = VertebraDataset(tmp_path, fixed)
    im = ds.images[0]
    assert (im.height, im.width) == (2 * col.height, 2 * col.width)
    assert im.meta["spacing_mm"] == 1.0 and im.meta["resampled_from_mm"] == [2.0, 2.0]
    # each vertebra keeps its size in mm: 4x the pixels of its 2 mm mask
    from napari_vertebra.annotation.polygons import rasterize

    _, masks = ds.masks(0)

    for a, m in zip(col.annotations, masks, strict=True):
        area_2mm = rasterize(a.polygons, (col.height, col.width)).sum()
        assert m.sum() == pytest.approx(4 * area_2mm, rel=0.1)
    # without a fixed scale the images are used as they are (torchvision resizes them)
    plain = VertebraDataset(tmp_path, {**fixed.to_dict(), "pixels_per_mm": None})
    assert plain.images[0].height == col.height


def test_training_refuses_images_without_a_spacing(tmp_path, fixed, capsys):
    write_synth(tmp_path, 3, size=(96, 48), seed=1)  # scaled: no physical scale
    with pytest.raises(ValueError, match="does not record its pixel spacing") as e:
        VertebraDataset(tmp_path / "train", fixed)
    assert "annotations.json" in str(e.value) and '"spacing_mm"' in str(e.value)
    # the command line: refused before the run folder is made
    cfg = tmp_path / "fixed.yaml"
    cfg.write_text(fixed.to_yaml(), encoding="utf-8")
    run = tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--data", str(tmp_path), "-o", str(run)]
    assert cli_main(argv) == 2
    assert "spacing_mm" in capsys.readouterr().err and not run.exists()


def test_prediction_sees_the_mip_at_its_spacing(fixed, monkeypatch):
    from napari_vertebra.model import predict as P

    pred = P.Predictor(build_model(fixed), config=fixed, min_score=0.0)
    assert pred.tile_rows == 256 and pred.tile_rows_at(2.0) == 128
    seen, real = [], pred.model.transform.resize

    def spy(image, target=None):
        out = real(image, target)
        seen.append(tuple(out[0].shape[-2:]))
        return out

    monkeypatch.setattr(pred.model.transform, "resize", spy)
    decoded = []
    real_post = P.postprocess
    monkeypatch.setattr(
        P, "postprocess", lambda *a, **k: decoded.append(k["pixel_mm"]) or real_post(*a, **k)
    )
    mip = np.random.default_rng(0).uniform(0, 1500, (100, 40)).astype(np.float32)
    out = pred.predict(mip, spacing=2.0)
    assert seen == [(200, 80)] and decoded == [2.0]  # 2 mm pixels at 1 px per mm
    assert out.masks.shape[1:] == (100, 40)  # the prediction is on the MIP's own grid
    seen.clear()
    pred.predict(mip)  # no spacing: 1 mm, the pipeline's grid
    assert seen == [(100, 40)]
    tall = np.random.default_rng(1).uniform(0, 1500, (200, 40)).astype(np.float32)
    seen.clear()
    assert pred.predict(tall, spacing=2.0).masks.shape[1:] == (200, 40)
    assert len(seen) >= 2 and all(h <= 256 for h, _ in seen)  # tiled: 400 mm > 256 mm
    assert pred.model.transform.spacing == (1.0, 1.0)  # restored


def test_predict_refuses_a_mip_of_unknown_spacing(tmp_path, fixed_checkpoint, capsys):
    write_synth(tmp_path / "d", 3, size=(96, 48), seed=1)
    png = next((tmp_path / "d" / "train").glob("*.png"))
    out = tmp_path / "out"
    assert cli_main(["predict", str(fixed_checkpoint), str(png), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(png) in err and "--spacing MM" in err and "fixed scale" in err
    assert not out.exists()
    argv = ["predict", str(fixed_checkpoint), str(png), "-o", str(out), "--min-score", "0"]
    assert cli_main([*argv, "--spacing", "2"]) == 0
    images = json.loads((out / "images.json").read_text(encoding="utf-8"))
    assert images[0]["spacing_mm"] == 2.0
    # beside it the report.json of `napari-vertebra preprocess`: its spacing is used
    (png.parent / "report.json").write_text(json.dumps({"params": {"spacing_mm": 1.0}}))
    assert cli_main(argv) == 0


def test_evaluate_refuses_a_split_without_spacing(tmp_path, fixed_checkpoint, capsys):
    write_synth(tmp_path, 3, size=(96, 48), seed=1)
    out = tmp_path / "ev"
    argv = ["evaluate", str(fixed_checkpoint), "--data", str(tmp_path / "test"), "-o", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "annotations.json" in err and "spacing_mm" in err and not out.exists()


def test_partial_views_and_coco_keep_the_spacing(tmp_path):
    from napari_vertebra.annotation.dataset import build_dataset
    from napari_vertebra.model.evaluate import image_spacing

    col = synth_column(np.random.default_rng(2), pixel_mm=1.5, name="c")
    write_coco([col], tmp_path / "in")
    build_dataset([tmp_path / "in" / "annotations.json"], tmp_path / "ds", views_per_image=3)
    images = read_coco(tmp_path / "ds" / "train" / "annotations.json")
    assert len(images) >= 2 and any(im.meta.get("view") == "partial" for im in images)
    assert all(image_spacing({"meta": im.meta}, default=None) == (1.5, 1.5) for im in images)
    # a spacing beside "meta" (a COCO file from elsewhere) is read too
    data = json.loads((tmp_path / "in" / "annotations.json").read_text(encoding="utf-8"))
    for e in data["images"]:
        e["meta"].pop("spacing_mm")
        e["spacing"] = [1.5, 1.5]
    (tmp_path / "in" / "annotations.json").write_text(json.dumps(data), encoding="utf-8")
    im = read_coco(tmp_path / "in" / "annotations.json")[0]
    assert image_spacing({"meta": im.meta}, default=None) == (1.5, 1.5)
