"""Model construction, checkpoints, data, prediction and the CLI: mechanics and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vertebra.cli import main as cli_main
from napari_vertebra.model.build import (
    CheckpointError,
    build_model,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from napari_vertebra.model.data import VertebraDataset
from napari_vertebra.model.device import resolve_device
from napari_vertebra.model.predict import Predictor
from napari_vertebra.model.train import train


@pytest.fixture(scope="module")
def trained_run(tiny_data, tiny_overrides, tmp_path_factory):
    """A 1-epoch tiny run (mechanics only)."""
    from napari_vertebra.model.config import load_config

    run = tmp_path_factory.mktemp("run")
    cfg = load_config(None, {**tiny_overrides, "epochs": 1})
    train(cfg, tiny_data, run)
    return run


def test_build_settings_and_no_download(tiny_config):
    m = build_model(tiny_config)
    assert m.roi_heads.detections_per_img == 100
    assert m.rpn._pre_nms_top_n["testing"] == 30
    assert m.rpn._post_nms_top_n["testing"] == 20
    # without starting weights the backbone BatchNorm is trainable
    assert isinstance(m.backbone.body.bn1, torch.nn.BatchNorm2d)
    tv = build_model(tiny_config, settings="torchvision")
    assert tv.rpn._post_nms_top_n["testing"] == 1000
    assert tv.roi_heads.detections_per_img == 100
    r50 = build_model(
        {**tiny_config.to_dict(), "backbone": "resnet50", "aspect_ratios": [0.5, 1.0]}
    )
    assert r50.rpn.head.cls_logits.out_channels == 2  # one per aspect ratio
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model({**tiny_config.to_dict(), "backbone": "vgg"})


def test_epoch_steps_match_the_loader():
    from napari_vertebra.model.data import epoch_steps as _epoch_steps

    assert _epoch_steps(42, 4) == (10, True)  # 2 images of the last batch dropped
    assert _epoch_steps(40, 4) == (10, True)
    assert _epoch_steps(3, 4) == (1, False)  # fewer images than a batch: one step
    assert _epoch_steps(6, 4, world=2) == (1, False)  # 3 per rank: not dropped
    assert _epoch_steps(4, 2, world=2) == (1, False)
    for n, bs, world in [(42, 4, 1), (13, 4, 1), (3, 4, 1), (9, 2, 1)]:
        steps, drop = _epoch_steps(n, bs, world)
        loader = torch.utils.data.DataLoader(range(n), batch_size=bs, drop_last=drop)
        assert steps == len(loader), (n, bs)


def test_multi_scale_min_size(tiny_config):
    """A list of min_size values trains at one of them per batch, infers at the last."""
    m = build_model({**tiny_config.to_dict(), "min_size": [48, 96], "max_size": 192})
    assert m.transform.min_size == (48, 96)
    im = torch.rand(3, 96, 48)
    m.eval()
    assert m.transform([im])[0].image_sizes == [(192, 96)]  # eval: the last, 96
    m.train()
    seen = {m.transform([im])[0].image_sizes[0] for _ in range(40)}
    assert seen == {(96, 48), (192, 96)}
    with pytest.raises(ValueError, match="min_size"):
        build_model({**tiny_config.to_dict(), "min_size": []})


def test_starting_weights_imagenet_and_coco(tiny_config, tmp_path):
    import torchvision

    # an "ImageNet" ResNet-18 state dict (random values, the right keys)
    rn = torchvision.models.resnet18(weights=None)
    p = tmp_path / "rn18.pth"
    torch.save(rn.state_dict(), p)
    m = build_model({**tiny_config.to_dict(), "weights": str(p)})
    assert any("fc." in s for s in m.skipped_keys)
    assert torch.equal(m.backbone.body.conv1.weight, rn.conv1.weight)
    assert not m.backbone.body.conv1.weight.requires_grad  # frozen stages with weights
    assert type(m.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"
    # a "COCO" Mask R-CNN state dict with 91 classes: class heads skipped
    coco = build_model(tiny_config).state_dict()
    coco["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(91, 32)
    p2 = tmp_path / "coco.pth"
    torch.save(coco, p2)
    m2 = build_model({**tiny_config.to_dict(), "weights": str(p2)})
    assert any("cls_score" in s for s in m2.skipped_keys)
    # garbage
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"bad\.pth"):
        build_model({**tiny_config.to_dict(), "weights": str(bad)})
    other = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="no weight matches"):
        build_model({**tiny_config.to_dict(), "weights": str(other)})


def test_checkpoint_errors(tiny_config, tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(build_model(tiny_config).state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a napari-vertebra checkpoint"):
        load_checkpoint(plain)
    junk = tmp_path / "junk.pt"
    junk.write_text("hello", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"junk\.pt") as e:
        load_checkpoint(junk)
    # one plain sentence, not torch's text about weights_only ("Please file an issue...")
    assert "cannot be read as a checkpoint" in str(e.value)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    # ours, but for another model (weights do not fit its config)
    other = tmp_path / "other.pt"
    save_checkpoint(
        other,
        model=build_model(tiny_config).state_dict(),
        config={**tiny_config.to_dict(), "fpn_channels": 8},
    )
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(other)


def test_cuda_request_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device(None).type == "cpu"


def test_dataset_targets_and_augmentation(tiny_data, tiny_config):
    ds = VertebraDataset(
        tiny_data / "train", {**tiny_config.to_dict(), "aug_partial_prob": 1.0}, train=True
    )
    x, t = ds[0]
    assert x.shape[0] == 3 and float(x.max()) <= 1.0
    assert x.shape[1] < 96  # partial view: a run of rows
    labels = t["labels"].numpy()
    assert np.all(np.diff(labels) > 0)  # never flipped: order top to bottom kept
    rows = [float(np.nonzero(m.numpy())[0].mean()) for m in t["masks"]]
    assert np.all(np.diff(rows) > 0)
    # deterministic per (seed, epoch, index)
    x2, _ = ds[0]
    assert torch.equal(x, x2)


def test_dataset_without_annotations(tmp_path):
    from napari_vertebra.annotation.coco import write_coco
    from napari_vertebra.annotation.types import AnnotatedImage

    im = AnnotatedImage("a.png", 32, 32, [], image=np.zeros((32, 32), np.float32))
    write_coco([im], tmp_path / "empty")
    with pytest.raises(ValueError, match=r"annotations.json.*no annotations"):
        VertebraDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="not found"):
        VertebraDataset(tmp_path / "nowhere")


def test_train_writes_run_and_predictor(trained_run, tiny_data):
    for name in ("last.pt", "best.pt", "log.csv", "config.yaml"):
        assert (trained_run / name).is_file(), name
    ckpt = load_checkpoint(trained_run / "last.pt")
    assert ckpt["epoch"] == 1 and "optimizer" in ckpt and "scheduler" in ckpt
    # the configuration is in the checkpoint and beside it, the same
    from napari_vertebra.model.config import TrainConfig, load_config

    beside = load_config(trained_run / "config.yaml")
    assert TrainConfig.from_dict(ckpt["config"]) == beside
    assert beside.epochs == 1 and beside.fpn_channels == 16
    pred = Predictor(trained_run / "best.pt", min_score=0.0)
    # the training vertebrae per class, for the level decoder's class prior
    train_ds = VertebraDataset(tiny_data / "train", beside)
    counts = np.bincount(
        [a.class_id for im in train_ds.images for a in im.annotations], minlength=18
    )[1:]
    assert ckpt["class_counts"] == counts.tolist() and counts.sum() > 0
    assert np.array_equal(pred.class_counts, counts)
    freq = pred.class_frequencies
    assert freq is not None and freq.shape == (17,) and np.isclose(freq.sum(), 1.0)
    pred.config = pred.config.replace(level_class_prior=False)
    assert pred.class_frequencies is None
    pred.config = pred.config.replace(level_class_prior=True)
    ds = VertebraDataset(tiny_data / "test")
    out = pred.predict(ds.images[0].image)
    assert out.masks.shape[1:] == (ds.images[0].height, ds.images[0].width)
    assert len(out) <= 17
    if len(out) > 1:
        assert np.all(np.diff(out.classes) > 0)  # anatomical order
    # validation names the levels as prediction does (the class prior included): its
    # figures are those of `evaluate` on the val split with the saved model
    from napari_vertebra.model.report import run_evaluation

    val = ckpt["metrics"]
    ev = run_evaluation(trained_run / "last.pt", tiny_data / "val", trained_run / "ev")
    assert ev["n_pred"] > 0 and val["val_level_certain_share"] is not None
    for key in ("id_rate", "level_certain_share", "level_certain_id_rate"):
        assert val[f"val_{key}"] == pytest.approx(ev[key]), key
    # the Predictor keeps them: a "certain" naming can say how this model did
    assert Predictor(trained_run / "last.pt").validation["val_level_certain_share"] == (
        pytest.approx(val["val_level_certain_share"])
    )
    with pytest.raises(ValueError, match="2D grayscale"):
        pred.predict(np.zeros((96, 48, 3), np.float32))
    with pytest.raises(ValueError, match="2D grayscale"):
        pred.predict(np.zeros((4, 96, 48), np.float32))


def test_validation_decodes_with_the_training_class_prior(
    tiny_column_data, tiny_config, monkeypatch
):
    """Training validates as Predictor predicts: the level decoder gets the training
    share of each class (and the spacing prior of a fixed-scale model)."""
    from napari_vertebra.model import predict
    from napari_vertebra.model.engine import evaluate
    from napari_vertebra.model.levels import class_frequencies

    seen = []
    real = predict.postprocess

    def spy(*args, **kw):
        seen.append((kw.get("class_frequencies"), kw.get("pixel_mm")))
        return real(*args, **kw)

    monkeypatch.setattr(predict, "postprocess", spy)
    torch.manual_seed(0)
    cfg = {**tiny_config.to_dict(), "pixels_per_mm": 1.0}
    ds = VertebraDataset(tiny_column_data / "val", cfg)  # a fixed scale needs a spacing
    counts = np.arange(1, 18)
    metrics = evaluate(build_model(cfg), ds, torch.device("cpu"), 0.0, class_counts=counts)
    assert len(seen) == len(ds) and "level_certain_share" in metrics
    for freq, pixel_mm in seen:
        assert np.allclose(freq, class_frequencies(counts)) and pixel_mm == 1.0


@pytest.mark.parametrize("box_iou", [0.5, None])
def test_masks_only_for_survivors_change_nothing(tiny_config, box_iou):
    """The mask head on the detections that survive the score threshold and duplicate
    suppression gives the same prediction as torchvision's forward (masks of all)."""
    from napari_vertebra.model.anatomy import box_suppression, mask_overlap_suppression
    from napari_vertebra.model.data import image_to_tensor
    from napari_vertebra.model.detect import full_detections, raw_detections
    from napari_vertebra.model.predict import postprocess
    from napari_vertebra.synth import synth_spine

    torch.manual_seed(0)
    model = build_model({**tiny_config.to_dict(), "box_score_thresh": 0.0}).eval()
    im = synth_spine(np.random.default_rng(0), (128, 64))[0]
    t = image_to_tensor(im)
    full = full_detections(model, [t])[0]
    raw = raw_detections(model, [t], 0.0, box_iou)[0]
    assert torch.equal(raw["boxes"], full["boxes"]) and len(raw["keep"]) <= 17
    assert len(raw["scores"]) > len(raw["keep"])  # fewer masks than detections
    assert len(raw["keep"]) <= int(raw["mask_rois"]) < len(raw["scores"])
    scores = full["scores"].numpy()  # the class probability min_score applies to
    for ms in [0.0, *np.quantile(scores, [0.3, 0.7, 0.95]).tolist(), 1.0]:
        ref = postprocess(full, im.shape, ms, box_iou=box_iou)
        for det in (raw, raw_detections(model, [t], ms, box_iou)[0]):
            for got in (
                postprocess(det, im.shape, ms),
                postprocess(det, im.shape, ms, box_iou=box_iou),
            ):
                for k in ("classes", "boxes", "scores", "masks", "class_probs"):
                    assert np.array_equal(getattr(got, k), getattr(ref, k)), (ms, k)
    assert len(postprocess(raw, im.shape, 0.0)) > 1
    with pytest.raises(ValueError, match=r"masks for scores >= 0\.5"):
        postprocess(raw_detections(model, [t], 0.5, box_iou)[0], im.shape, 0.4)
    with pytest.raises(ValueError, match="box IoU"):
        postprocess(raw, im.shape, 0.0, box_iou=0.3)
    # the incremental suppression is the batch one (after the box step)
    order = np.argsort(-scores, kind="stable")
    order = order[box_suppression(full["boxes"].numpy()[order], box_iou)]
    masks = (full["masks"][order, 0] > 0.5).numpy()
    keep = order[mask_overlap_suppression(masks, scores[order])]
    assert list(keep[:17]) == raw["keep"].tolist()


def test_cli_synth_train_predict_evaluate(tiny_data, tiny_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    overrides = [f"{k}={json.dumps(v)}" for k, v in tiny_overrides.items() if k != "epochs"]
    assert cli_main(["train", "--data", str(tiny_data), "-o", str(run), "--epochs", "1",
                     "--device", "cpu", *overrides]) == 0  # fmt: skip
    mip = VertebraDataset(tiny_data / "test").images[0].image
    np.save(tmp_path / "mip.npy", mip)
    out = tmp_path / "pred"
    assert cli_main(["predict", str(run / "last.pt"), str(tmp_path / "mip.npy"), "-o", str(out),
                     "--min-score", "0"]) == 0  # fmt: skip
    assert (out / "predictions.json").is_file()
    assert (out / "mip_labels.png").is_file() and (out / "mip_overlay.png").is_file()
    ev = tmp_path / "eval"
    assert cli_main(["evaluate", str(run / "last.pt"), "--data", str(tiny_data / "test"),
                     "-o", str(ev), "--min-score", "0"]) == 0  # fmt: skip
    metrics = json.loads((ev / "metrics.json").read_text(encoding="utf-8"))
    for key in ("mask_mAP", "box_mAP", "mean_dice", "dice_per_class", "id_rate"):
        assert key in metrics
    assert set(metrics["dice_per_class"]) >= {"T1", "L5"}
    assert (ev / "dice_per_class.png").is_file()
    capsys.readouterr()
    # clear errors: CUDA where there is none, a checkpoint that is not ours, a 3D array
    if not torch.cuda.is_available():
        assert cli_main(["predict", str(run / "last.pt"), str(tmp_path / "mip.npy"), "-o",
                         str(out), "--device", "cuda"]) == 2  # fmt: skip
        assert "CUDA" in capsys.readouterr().err
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pt")
    assert cli_main(["predict", str(tmp_path / "plain.pt"), str(tmp_path / "mip.npy"),
                     "-o", str(out)]) == 2  # fmt: skip
    assert "not a napari-vertebra checkpoint" in capsys.readouterr().err
    np.save(tmp_path / "vol.npy", np.zeros((3, 40, 40), np.float32))
    assert cli_main(["predict", str(run / "last.pt"), str(tmp_path / "vol.npy"),
                     "-o", str(out)]) == 2  # fmt: skip
    assert "2D grayscale" in capsys.readouterr().err
