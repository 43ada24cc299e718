"""Resuming a run: same model (frozen stages, norm layers), same optimizer steps, overrides."""

from __future__ import annotations

import threading

import pytest
import torch

from napari_vertebra.model.build import load_checkpoint
from napari_vertebra.model.train import train


def _adam_steps(ckpt: dict) -> int:
    """Optimizer steps taken, from AdamW's per-parameter step counter."""
    return max(int(s["step"]) for s in ckpt["optimizer"]["state"].values())


def _assert_same_as_uninterrupted(run, ref) -> None:
    """The resumed ``run`` took the uninterrupted ``ref``'s 4 steps with the same samples,
    random numbers and losses: the same weights, and the same epoch rows in log.csv."""
    ckpt, ref_ckpt = load_checkpoint(run / "last.pt"), load_checkpoint(ref / "last.pt")
    assert _adam_steps(ckpt) == _adam_steps(ref_ckpt) == 4
    assert ckpt["step"] == ref_ckpt["step"] == 4
    for k, v in ref_ckpt["model"].items():
        assert torch.allclose(ckpt["model"][k].float(), v.float(), atol=1e-6), k
    rows = (run / "log.csv").read_text().splitlines()
    ref_rows = (ref / "log.csv").read_text().splitlines()
    assert len(rows) == len(ref_rows) == 3  # header, epoch 1, epoch 2
    for a, b in zip(rows[1:], ref_rows[1:], strict=True):
        assert a.split(",")[:8] == b.split(",")[:8]


@pytest.fixture()
def imagenet_file(tmp_path):
    """An "ImageNet" ResNet-18 state dict (random values, the right keys)."""
    import torchvision

    p = tmp_path / "rn18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), p)
    return p


@pytest.mark.slow
def test_resume_from_starting_weights_keeps_frozen_stages(
    tiny_data, tiny_config, imagenet_file, tmp_path
):
    """Train 1 epoch from a weights file with frozen stages, then --resume to epoch 2."""
    cfg = {**tiny_config.to_dict(), "weights": str(imagenet_file), "trainable_layers": 3}
    run = tmp_path / "run"
    train({**cfg, "epochs": 1}, tiny_data, run)
    first = load_checkpoint(run / "last.pt")
    out = train({**cfg, "epochs": 2}, tiny_data, run, resume=True)
    assert out["epoch"] == 2 and not out["stopped"]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2
    # the frozen stem did not move while resuming; a trained stage did
    key = "backbone.body.conv1.weight"
    assert torch.equal(ckpt["model"][key], first["model"][key])
    key4 = "backbone.body.layer4.0.conv1.weight"
    assert not torch.equal(ckpt["model"][key4], first["model"][key4])


@pytest.mark.slow
def test_stop_mid_epoch_then_resume_takes_the_same_steps(tiny_data, tiny_config, tmp_path):
    """Stopping after the first step of epoch 1 and resuming gives as many optimizer steps
    as the uninterrupted run (2 epochs x 2 steps), and the same weights."""
    ref = tmp_path / "ref"
    train(tiny_config, tiny_data, ref)
    run = tmp_path / "run"
    stop = threading.Event()

    def progress(fraction, message):
        if message.startswith("epoch 1/2 step 1/2"):
            stop.set()

    out = train(tiny_config, tiny_data, run, progress=progress, stop=stop)
    assert out["stopped"]
    assert _adam_steps(load_checkpoint(run / "last.pt")) == 1
    out2 = train(tiny_config, tiny_data, run, resume=True)
    assert out2["epoch"] == 2 and not out2["stopped"]
    _assert_same_as_uninterrupted(run, ref)


class _StopAfterFirstValImage:
    """A stop flag that is set once the first validation image of epoch 1 is done: the
    trainer checks it before each step and before each validation image."""

    def __init__(self) -> None:
        self.validating = False
        self.checks = 0

    def progress(self, fraction, message):
        if message.startswith("epoch 1/2 validating"):
            self.validating = True

    def is_set(self) -> bool:
        if not self.validating:
            return False
        self.checks += 1
        return self.checks > 1  # the check before the second image


@pytest.mark.slow
def test_stop_while_validating_then_resume_validates_and_goes_on(
    tiny_data, tiny_config, tmp_path, monkeypatch
):
    """Stop during the validation of epoch 1 (it used to finish the validation and save
    the epoch first): stopped before the next image with a resumable last.pt (all the
    epoch's steps, no epoch row); the resumed run validates epoch 1 and ends with the
    weights, steps and log of the uninterrupted run."""
    from napari_vertebra.model import evaluate as evaluate_module

    ref = tmp_path / "ref"
    train(tiny_config, tiny_data, ref)
    predicted = []
    named = evaluate_module.named_results

    def spy(model, images, *args, **kwargs):
        predicted.append(len(images))
        return named(model, images, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "named_results", spy)
    run = tmp_path / "run"
    flag = _StopAfterFirstValImage()
    out = train(tiny_config, tiny_data, run, progress=flag.progress, stop=flag)
    assert out["stopped"] and sum(predicted) == 1  # one of the 2 val images, then stop
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["step"]) == (0, 2, 2)
    assert _adam_steps(ckpt) == 2
    assert not (run / "log.csv").exists() and not (run / "best.pt").exists()
    out2 = train(tiny_config, tiny_data, run, resume=True)
    assert out2["epoch"] == 2 and not out2["stopped"]
    _assert_same_as_uninterrupted(run, ref)  # epoch 1 validated on resume
    assert (run / "best.pt").is_file()


@pytest.fixture(scope="module")
def one_epoch_run(tiny_data, tiny_overrides, tmp_path_factory):
    """A 1-epoch tiny run (its folder is copied by the tests that resume it)."""
    from napari_vertebra.model.config import load_config

    run = tmp_path_factory.mktemp("one_epoch")
    train(load_config(None, {**tiny_overrides, "epochs": 1}), tiny_data, run)
    return run


def test_checkpoint_holds_what_resuming_needs(one_epoch_run):
    ckpt = load_checkpoint(one_epoch_run / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step_in_epoch"] == 0 and ckpt["world"] == 1
    assert len(ckpt["rng"]) == 1 and {"torch", "numpy", "python"} <= set(ckpt["rng"][0])
    assert ckpt["trainable"] and ckpt["best_metric"] == "id_rate"
    assert "val_id_rate" in ckpt["metrics"] and "val_mask_mAP" in ckpt["metrics"]
    assert (one_epoch_run / "best.pt").is_file()
    assert not list(one_epoch_run.glob(".*tmp*"))  # no temporary file left


def test_cli_resume_applies_or_refuses_overrides(one_epoch_run, tiny_data, tmp_path, capsys):
    import shutil

    from napari_vertebra.cli import main as cli_main

    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    base = ["train", "--data", str(tiny_data), "-o", str(run), "--device", "cpu", "--resume"]
    # a change that would train another model is refused, naming the key; nothing written
    before = (run / "last.pt").read_bytes()
    assert cli_main([*base, "batch_size=3"]) == 2
    err = capsys.readouterr().err
    assert "cannot change batch_size" in err and "Traceback" not in err
    assert (run / "last.pt").read_bytes() == before
    # lr and epochs are applied (as torchrun.sh shows: --resume lr=0.002)
    with pytest.warns(UserWarning, match=r"lr 0\.001 -> 0\.002"):
        assert cli_main([*base, "--epochs", "2", "lr=0.002"]) == 0
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["lr"] == 0.002
    assert all(g["initial_lr"] == 0.002 for g in ckpt["optimizer"]["param_groups"])
    assert "lr: 0.002" in (run / "config.yaml").read_text()


def test_checkpoint_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    import os

    from napari_vertebra.model import build

    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(build.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(
        build.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))
    )
    build.save_checkpoint(tmp_path / "last.pt", model={"w": torch.zeros(2)}, config={})
    assert calls[:2] == ["fsync", "replace"]
    assert load_checkpoint(tmp_path / "last.pt")["model"]["w"].shape == (2,)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_empty_or_missing_val_validates_on_train_with_a_warning(tiny_data, tiny_config, tmp_path):
    """One exported scan leaves val empty (the split is by scan): training goes on,
    validating on train, and says so (it used to die after the export)."""
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    coco = json.loads((data / "val" / "annotations.json").read_text(encoding="utf-8"))
    coco["images"], coco["annotations"] = [], []
    (data / "val" / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")
    cfg = {**tiny_config.to_dict(), "epochs": 1, "max_steps_per_epoch": 1}
    with pytest.warns(UserWarning, match="val split has no images; validating on the train"):
        train(cfg, data, tmp_path / "empty")
    assert (tmp_path / "empty" / "best.pt").is_file()
    shutil.rmtree(data / "val")
    with pytest.warns(UserWarning, match="val split is missing"):
        train(cfg, data, tmp_path / "missing")
    shutil.rmtree(data / "train")
    with pytest.raises(ValueError, match=r"train/annotations\.json"):
        train(cfg, data, tmp_path / "none")
