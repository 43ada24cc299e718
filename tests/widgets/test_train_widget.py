"""The "Train model" widget: progress per step from the trainer's progress.jsonl, every
error as a notification, stop and resume of a real training process, cluster job,
loading a run folder.

Most tests replace the trainer's command by a small fake trainer (a Python one-liner
that writes progress lines as the real one does), so they follow the widget, not
torch; the slow tests start the real ``napari-vertebra train``.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
from widget_helpers import SMOKE, TINY, write_checkpoint

from napari_vertebra.model import run as run_module
from napari_vertebra.model.cluster import write_cluster_job
from napari_vertebra.model.progress import PROGRESS_NAME
from napari_vertebra.model.run import STOP_NAME
from napari_vertebra.widgets import _train_plot
from napari_vertebra.widgets import train as train_module
from napari_vertebra.widgets.train import TrainWidget

pytestmark = pytest.mark.gui


#: A fake trainer: ``python -c FAKE RUN``: 10 steps of one epoch; after step 3 it waits
#: for RUN/GO (so the test sees the run mid-way), then validates and finishes; with
#: RUN/FAIL it prints a traceback ending in that file's text and exits 1 instead.
FAKE = r"""
import json, os, sys, time
run = sys.argv[1]
def w(**e):
    with open(os.path.join(run, "progress.jsonl"), "a") as f:
        f.write(json.dumps(e) + "\n")
def wait_for(name):
    end = time.time() + 120
    while not os.path.exists(os.path.join(run, name)) and time.time() < end:
        time.sleep(0.02)
w(phase="setup", message="loading the data and building the model")
w(phase="start", epoch=0, epochs=1, step=0, steps_in_epoch=10, total_steps=10)
for k in range(1, 11):
    w(phase="train", epoch=1, epochs=1, step=k, step_in_epoch=k, steps_in_epoch=10,
      total_steps=10, loss=3.0 / k, loss_mask=1.0 / k, lr=0.001)
    if k == 3:
        wait_for("GO")
    if os.path.exists(os.path.join(run, "FAIL")):
        print("Traceback (most recent call last):\n  File 'x', line 1", file=sys.stderr)
        print(open(os.path.join(run, "FAIL")).read(), file=sys.stderr)
        sys.exit(1)
w(phase="validate", epoch=1, epochs=1, step=10)
w(phase="epoch", epoch=1, step=10, loss=1.0, val_mask_mAP=0.4, val_box_mAP=0.5, val_id_rate=0.6,
  val_level_certain_share=0.8, val_level_certain_id_rate=0.65)
w(phase="done", epoch=1, epochs=1, step=10, message="finished")
"""


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    """Six synthetic MIPs as COCO splits (train/val/test)."""
    from napari_vertebra.synth import write_synth

    out = tmp_path_factory.mktemp("synth")
    write_synth(out, 6, size=(128, 64), seed=1)
    return out


@pytest.fixture
def train_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    yield widget
    if widget.run is not None:  # never leave a training process behind
        widget.run.kill()
    widget.close_widget()


def load(w, run_dir, qtbot):
    """Load run (read on the widget's worker thread) and wait until it is shown."""
    assert w.load_run(run_dir)
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=30_000)


@pytest.fixture
def notes(monkeypatch):
    """Every napari notification: [(level, message)]."""
    import napari.utils.notifications as notifications

    shown: list[tuple[str, str]] = []
    for level in ("error", "warning", "info"):
        monkeypatch.setattr(
            notifications, f"show_{level}", lambda msg, level=level: shown.append((level, msg))
        )
    return shown


@pytest.fixture
def fake_trainer(monkeypatch):
    """The widget starts FAKE instead of `napari-vertebra train`."""
    monkeypatch.setattr(
        run_module, "train_command",
        lambda config, data, run_dir, resume=False, device=None: [
            sys.executable, "-c", FAKE, str(run_dir)
        ],
    )  # fmt: skip


def _coco(folder: Path, val_images: int = 1) -> Path:
    """The smallest dataset folder the widget accepts (the fake trainer reads nothing)."""
    for split, n in (("train", 2), ("val", val_images)):
        (folder / split).mkdir(parents=True)
        images = [{"id": i + 1, "file_name": f"{i}.png"} for i in range(n)]
        (folder / split / "annotations.json").write_text(json.dumps({"images": images}))
    return folder


def _form(w: TrainWidget, data: Path, run: Path) -> None:
    w.config_file.value = str(SMOKE)
    w.data_dir.value = str(data)
    w.run_folder.value = str(run)
    w.weights.value = None


# ------------------------------------------------------------------ progress
def test_progress_bar_and_plot_follow_the_steps(
    train_widget, fake_trainer, tmp_path, qtbot, notes, thread_spy
):
    """The bar shows the steps of the run (3 of 10: 30 %, never 100 % while it runs) and
    the plot a loss point per step from the first step on; validation per epoch. It
    used to read 100 % from the export on and plot nothing until an epoch ended."""
    thread_spy(_train_plot, "render")
    w = train_widget
    run = tmp_path / "run"
    _form(w, _coco(tmp_path / "data"), run)
    assert w.start(), w.status.value
    assert w.running and w.progress_bar.value == 0
    # the bar and the plot follow the same poll; wait for both (a loaded machine may
    # show the plot's third point one event-loop turn before the bar's value)
    qtbot.waitUntil(lambda: w.plot.n_points == 3 and w.progress_bar.value == 30, timeout=60_000)
    assert w.running
    assert "epoch 1/1, step 3/10" in w.progress_bar.native.format()
    assert "step 3/10" in w.status.value
    qtbot.waitUntil(lambda: w.plot.n_draws >= 2 and not w.plot.runner.busy, timeout=30_000)
    lines = {ln.get_label(): ln for ln in w.plot.ax_loss.get_lines()}
    assert len(lines["loss (total)"].get_xdata()) == 3  # one point per step
    assert list(lines["loss (total)"].get_xdata()) == pytest.approx([0.1, 0.2, 0.3])
    assert w.plot.ax_map.get_lines() == []  # no epoch validated yet
    with qtbot.waitSignal(w.finished, timeout=60_000) as done:
        (run / "GO").write_text("")
    assert done.args == [0] and w.progress_bar.value == 100
    qtbot.waitUntil(lambda: not w.plot.runner.busy, timeout=30_000)
    labels = {ln.get_label() for ln in w.plot.ax_map.get_lines()}
    assert labels == {"val mask mAP", "val box mAP", "val id rate"}
    assert not [n for n in notes if n[0] == "error"]
    # the end says how honest the level confidence was on the val images, and warns:
    # 80 % of them called certain, but those were identified at only 0.65
    info = [m for lv, m in notes if lv == "info" and m.startswith("finished")]
    assert info and "80% called certain (>= 0.9), identified at 0.65" in info[-1]
    assert notes[-1][0] == "warning" and "overstates" in notes[-1][1]
    assert w.status.level == "warning" and w.status.value == info[-1]  # the facts, orange
    # what is under the widget's control: the figure is drawn off the GUI thread (and
    # the training runs in another process)
    assert thread_spy.ran_off_gui_thread("render")
    assert w.process.pid != os.getpid()


def test_a_followed_run_shows_its_progress(train_widget, tmp_path, qtbot, notes):
    """Load run on a folder whose trainer runs (train.pid): the widget follows
    progress.jsonl as it grows, a partial last line included."""
    import subprocess

    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / "train.pid").write_text(str(proc.pid))
        start = dict(phase="start", epoch=0, epochs=2, step=0, steps_in_epoch=5, total_steps=10)
        steps = [
            dict(
                phase="train",
                epoch=1,
                epochs=2,
                step=k,
                step_in_epoch=k,
                steps_in_epoch=5,
                total_steps=10,
                loss=1.0 / k,
            )
            for k in (1, 2, 3)
        ]
        text = "".join(json.dumps(e) + "\n" for e in [start, *steps[:2]])
        (run / PROGRESS_NAME).write_text(text + json.dumps(steps[2])[:20])
        w = train_widget
        load(w, run, qtbot)
        assert w.running and "following" in w.status.value
        assert w.progress_bar.value == 20 and w.plot.n_points == 2
        with open(run / PROGRESS_NAME, "a") as f:
            f.write(json.dumps(steps[2])[20:] + "\n")
        qtbot.waitUntil(lambda: w.plot.n_points == 3, timeout=30_000)
        assert w.progress_bar.value == 30
    finally:
        proc.kill()
        proc.wait(10)
    with qtbot.waitSignal(w.finished, timeout=30_000):
        pass
    assert not w.running
    # killed mid-run: no "done" in progress.jsonl
    assert notes[-1][0] == "error" and "ended before it finished" in notes[-1][1]


# ------------------------------------------------------------------ errors
def test_start_errors_are_notifications(train_widget, tmp_path, monkeypatch, notes):
    w = train_widget
    w.data_dir.value = str(tmp_path)  # no train/ split
    w.run_folder.value = str(tmp_path / "run")
    # the paper configuration names detectron2's COCO R101 file, which is not here
    monkeypatch.chdir(tmp_path)
    assert w.preset.value == "paper" and w.weights.value is not None
    assert not w.start()
    assert "model_final_a3ec72.pkl: no such file" in w.status.value
    assert "random weights" in w.status.value and w.status.level == "error"
    assert notes[-1] == ("error", w.status.value)
    w.weights.value = None  # train from random weights: the next problem is the data
    assert not w.start()
    assert notes[-1][0] == "error" and "has no train split" in notes[-1][1]
    assert "train/annotations.json" in notes[-1][1]
    assert w.process is None
    assert not w.resume()  # nothing to resume
    assert notes[-1][0] == "error" and "no last.pt to resume" in notes[-1][1]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"x")
    _coco(tmp_path / "data")
    w.data_dir.value = str(tmp_path / "data")
    assert not w.start()
    assert notes[-1][0] == "error" and "already holds a run" in notes[-1][1]
    assert "Resume" in notes[-1][1] and w.process is None
    w.stop()
    assert notes[-1] == ("warning", "Train: no training is running")


def test_a_failing_trainer_is_a_notification_with_its_reason(
    train_widget, fake_trainer, tmp_path, qtbot, notes
):
    w = train_widget
    run = tmp_path / "run"
    _form(w, _coco(tmp_path / "data"), run)
    run.mkdir()
    (run / "FAIL").write_text("ValueError: w.pt: not a checkpoint this version reads")
    (run / "GO").write_text("")
    with qtbot.waitSignal(w.finished, timeout=60_000) as done:
        assert w.start()
    assert done.args == [1]
    level, msg = notes[-1]
    assert level == "error" and msg == w.status.value
    assert "ValueError: w.pt: not a checkpoint this version reads" in msg
    assert "Traceback" not in msg and str(run / "train.out") in msg
    assert w.progress_bar.value < 100


def test_an_empty_val_split_is_a_warning(train_widget, fake_trainer, tmp_path, qtbot, notes):
    """A COCO folder with an empty val: training starts, validating on train, and says so."""
    w = train_widget
    run = tmp_path / "run"
    _form(w, _coco(tmp_path / "data", val_images=0), run)
    run.mkdir()
    (run / "GO").write_text("")
    with qtbot.waitSignal(w.finished, timeout=60_000) as done:
        assert w.start()
    assert done.args == [0]
    warnings = [m for level, m in notes if level == "warning"]
    assert any("val split" in m and "validating on the train split" in m for m in warnings)


@pytest.mark.slow
@pytest.mark.torch
def test_a_bad_checkpoint_is_one_plain_sentence(train_widget, synth_data, tmp_path, qtbot, notes):
    """Random bytes as starting weights: the real trainer fails; the notification names
    the file in plain words, without torch's text."""
    w = train_widget
    bad = tmp_path / "random.pt"
    bad.write_bytes(os.urandom(4096))
    _form(w, synth_data, tmp_path / "run")
    w.weights.value = str(bad)
    w.device.value = "cpu"
    w.config_overrides = dict(TINY)
    with qtbot.waitSignal(w.finished, timeout=300_000) as done:
        assert w.start(), w.status.value
    assert done.args != [0]
    level, msg = notes[-1]
    assert level == "error" and "random.pt" in msg
    assert "weights_only" not in msg and "file an issue" not in msg


# ------------------------------------------------------------------ the rest
def test_fields_follow_the_config_and_override_it(train_widget, tmp_path):
    w = train_widget
    w.config_file.value = str(SMOKE)
    assert w.backbone.value == "resnet18"
    w.epochs.value = 3
    w.lr.value = 0.0005
    w.config_overrides = {"min_size": 160}
    cfg = w.config()
    assert cfg.epochs == 3 and cfg.lr == pytest.approx(0.0005)
    assert cfg.min_size == 160 and cfg.backbone == "resnet18"
    w.weights.value = str(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing\.pt"):
        w.config()


def test_the_class_set_field_follows_the_config_and_reaches_the_run(train_widget, tmp_path):
    w = train_widget
    w.config_file.value = str(SMOKE)
    assert w.class_set.value == "paper"
    ext = tmp_path / "ext.yaml"
    ext.write_text(SMOKE.read_text(encoding="utf-8") + "\nclass_set: extended\n")
    w.config_file.value = str(ext)
    assert w.class_set.value == "extended"
    assert w.config().class_set == "extended"
    w.class_set.value = "paper"
    assert w.config().class_set == "paper"


def _labelled_coco(folder: Path, levels: list[str]) -> Path:
    """A train split whose annotations use ``levels`` (COCO category ids = class ids)."""
    from napari_vertebra.core.labels import EXTENDED, class_id

    (folder / "train").mkdir(parents=True, exist_ok=True)
    anns = [
        {"id": k + 1, "image_id": 1, "category_id": class_id(lv)} for k, lv in enumerate(levels)
    ]
    coco = {
        "images": [{"id": 1, "file_name": "0.png"}],
        "annotations": anns,
        "categories": EXTENDED.coco_categories(),
    }
    (folder / "train" / "annotations.json").write_text(json.dumps(coco))
    return folder


def test_the_class_set_field_follows_a_dataset_that_needs_the_extended_set(
    train_widget, tmp_path, notes
):
    from napari_vertebra.annotation.dataset import dataset_class_set

    w = train_widget
    w.config_file.value = str(SMOKE)
    paper = _labelled_coco(tmp_path / "paper", ["T11", "T12", "L1"])
    ext = _labelled_coco(tmp_path / "ext", ["T12", "T13", "L1"])
    # 21 categories written, but only paper levels used: the paper set is enough
    assert dataset_class_set(paper) == "paper" and dataset_class_set(ext) == "extended"
    assert dataset_class_set(tmp_path / "nowhere") is None
    w.data_dir.value = str(paper)
    assert w.class_set.value == "paper" and not notes
    w.data_dir.value = str(ext)
    assert w.class_set.value == "extended"
    assert notes and notes[-1][0] == "info" and "extended" in notes[-1][1]
    w.config_file.value = str(SMOKE)  # a config that says paper does not undo it
    assert w.class_set.value == "extended" and w.config().class_set == "extended"
    # dataset.json (written by `dataset build`) is read first
    (paper / "dataset.json").write_text(json.dumps({"class_set": "extended"}))
    assert dataset_class_set(paper) == "extended"
    # the labels are read once per version of the file, and again when it changes
    (paper / "dataset.json").unlink()
    assert dataset_class_set(paper) == "paper"
    _labelled_coco(paper, ["L4", "L5", "L6"])
    assert dataset_class_set(paper) == "extended"


def test_a_dataset_the_config_cannot_name_stops_before_the_process(
    train_widget, fake_trainer, tmp_path, notes
):
    """The open project exported with T13: a paper config is refused before the trainer
    starts, the field is switched and the message says to press Start again."""
    w = train_widget
    _form(w, _labelled_coco(tmp_path / "data", ["T12", "T13", "L1"]), tmp_path / "run")
    w.class_set.value = "paper"
    w._launch(tmp_path / "run", w.config(), tmp_path / "data", False)
    assert w.run is None
    level, msg = notes[-1]
    assert level == "error" and "press Start again" in msg and "T13" in msg
    assert w.class_set.value == "extended" and w.config().class_set == "extended"


def test_write_cluster_job(train_widget, synth_data, tmp_path):
    w = train_widget
    w.config_file.value = str(SMOKE)
    w.data_dir.value = str(synth_data)
    run = tmp_path / "job"
    w.run_folder.value = str(run)
    w.epochs.value = 7
    assert w.write_job() == run
    import yaml

    cfg = yaml.safe_load((run / "job_config.yaml").read_text(encoding="utf-8"))
    assert cfg["epochs"] == 7 and cfg["backbone"] == "resnet18"
    sh = (run / "run.sh").read_text(encoding="utf-8")
    assert "torchrun" in sh and str(synth_data) in sh and "job_config.yaml" in sh
    assert os.access(run / "run.sh", os.X_OK)
    sb = (run / "job.sbatch").read_text(encoding="utf-8")
    assert sb.startswith("#!/bin/bash") and "#SBATCH --gres=gpu" in sb and "run.sh" in sb
    # a dataset inside the run folder is referenced relatively (the folder is portable)
    inner = run / "dataset"
    inner.mkdir()
    write_cluster_job(run, cfg, inner)
    assert '"${DATA:-$RUN/dataset}"' in (run / "run.sh").read_text(encoding="utf-8")


def test_load_run_shows_curves_and_checkpoints(train_widget, tmp_path, qtbot, thread_spy):
    """A run folder whose progress.jsonl holds its epochs only (no step logged): the
    mean losses per epoch. The folder is read off the GUI thread (a long run's
    progress.jsonl took 18 s to fold in)."""
    thread_spy(train_module, "open_run")
    run = tmp_path / "run"
    run.mkdir()
    rows = [(1, 5, 3.0, 1.0, 0.1, 0.05), (2, 10, 2.0, 0.8, 0.3, 0.2), (3, 15, 1.5, 0.6, 0.4, 0.35)]
    keys = ("epoch", "step", "loss", "loss_mask", "val_box_mAP", "val_mask_mAP")
    events = [{"phase": "epoch", "epochs": 6, **dict(zip(keys, r, strict=True))} for r in rows]
    lines = "".join(json.dumps(e) + "\n" for e in events)
    (run / PROGRESS_NAME).write_text(lines, encoding="utf-8")
    (run / "config.yaml").write_text("epochs: 6\nbackbone: resnet50\n", encoding="utf-8")
    write_checkpoint(run / "last.pt")
    write_checkpoint(run / "best.pt")
    w = train_widget
    load(w, run, qtbot)
    assert thread_spy.ran_off_gui_thread("open_run")
    assert w.run.progress.completed_epochs == 3 and w.plot.n_points == 3
    assert w.progress_bar.value == 50  # 3 of 6 epochs
    assert w.selected_checkpoint() == run / "best.pt"  # best first
    assert [Path(v).name for v in w.checkpoint.choices] == ["best.pt", "last.pt"]
    assert w.backbone.value == "resnet50" and w.status.level == "ok"
    qtbot.waitUntil(lambda: w.plot.n_draws >= 2 and not w.plot.runner.busy)
    lines = w.plot.ax_loss.get_lines()
    assert {ln.get_label() for ln in lines} >= {"loss (total)", "mask"}
    assert len(w.plot.ax_map.get_lines()) == 2  # box and mask mAP


def test_load_run_says_how_honest_the_level_confidence_was(train_widget, tmp_path, notes, qtbot):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 1\n", encoding="utf-8")
    write_checkpoint(run / "last.pt")
    epoch = {"phase": "epoch", "epoch": 1, "step": 5, "val_id_rate": 0.9}
    events = [epoch | {"val_level_certain_share": 0.7, "val_level_certain_id_rate": 0.97}]
    events.append({"phase": "done", "epoch": 1, "epochs": 1, "step": 5})
    lines = "".join(json.dumps(e) + "\n" for e in events)
    (run / PROGRESS_NAME).write_text(lines, encoding="utf-8")
    w = train_widget
    load(w, run, qtbot)
    assert w.status.level == "ok" and w.status.value.endswith(
        "level confidence on the val images: 70% called certain (>= 0.9), identified at 0.97"
    )
    assert not notes
    bad = epoch | {"val_level_certain_share": 0.9, "val_level_certain_id_rate": 0.5}
    (run / PROGRESS_NAME).write_text(json.dumps(bad) + "\n", encoding="utf-8")
    load(w, run, qtbot)
    assert notes[-1][0] == "warning" and "identified at 0.50" in notes[-1][1]
    assert w.status.level == "warning" and w.status.value.endswith("identified at 0.50")


def test_load_run_on_a_folder_that_is_not_a_run_says_so(train_widget, tmp_path, notes, qtbot):
    """It used to say, in green, "loaded 0 epochs"."""
    w = train_widget
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"x")
    load(w, tmp_path / "photos", qtbot)
    assert w.status.level == "error" and "is not a training run" in w.status.value
    assert notes[-1] == ("error", w.status.value)
    load(w, tmp_path / "nowhere", qtbot)
    assert w.status.level == "error" and "no such folder" in w.status.value


def test_load_run_checks_that_its_checkpoints_load(
    train_widget, tmp_path, notes, qtbot, thread_spy
):
    """best.pt / last.pt of random bytes: it said "loaded garbage_run: 0 epoch(s), 2
    checkpoint(s)" and 'Use for prediction' took one; the damage showed only at Predict."""
    from qtpy.QtCore import Qt

    thread_spy(run_module, "checkpoint_problem")
    run = tmp_path / "garbage_run"
    run.mkdir()
    (run / "best.pt").write_bytes(os.urandom(4096))
    (run / "last.pt").write_bytes(os.urandom(4096))
    write_checkpoint(run / "epoch3.pt")
    w = train_widget
    handed = []
    w.session.checkpoint_changed.connect(handed.append)
    load(w, run, qtbot)
    assert thread_spy.ran_off_gui_thread("checkpoint_problem")  # torch.load, off the GUI
    sentence = (
        f"best.pt and last.pt in {run}: cannot be read as a checkpoint (damaged, cut short, "
        "or not a PyTorch file), so they are not offered for prediction and Resume needs a "
        "readable last.pt"
    )
    assert notes[-1] == ("warning", f"Load run: {sentence}")
    assert w.status.level == "warning" and sentence in w.status.value
    assert "1 usable checkpoint(s)" in w.status.value
    assert [Path(v).name for v in w.checkpoint.choices] == ["epoch3.pt"]  # the good one only
    (run / "epoch3.pt").unlink()
    w._refresh_checkpoints()
    assert w.checkpoint.choices == () or list(w.checkpoint.choices) == []
    assert not w.use_button.enabled
    qtbot.mouseClick(w.use_button.native, Qt.MouseButton.LeftButton)
    assert handed == [] and w.session.checkpoint is None
    assert not w.resume()  # from a damaged last.pt: refused with the same sentence
    assert notes[-1] == ("error", f"Train: cannot resume: {sentence}")
    write_checkpoint(run / "last.pt")  # written again (e.g. the run resumed elsewhere)
    w._refresh_checkpoints()
    assert [Path(v).name for v in w.checkpoint.choices] == ["last.pt"]


def test_closing_the_viewer_while_loading_a_run_raises_nothing(
    make_napari_viewer, tmp_path, qtbot, capfd
):
    """The folder's reading ends after the viewer is gone: dropped, no traceback."""
    viewer = make_napari_viewer(show=True)
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train model")
    run = tmp_path / "run"
    run.mkdir()
    write_checkpoint(run / "last.pt")
    runner = w.runner
    assert w.load_run(run)
    viewer.close()
    qtbot.waitUntil(lambda: not runner.busy, timeout=60_000)
    qtbot.wait(300)
    assert "Traceback" not in capfd.readouterr().err


def test_use_checkpoint_hands_it_to_the_session(train_widget, tmp_path, qtbot):
    """'Use for prediction' talks to the viewer's session, not to another widget."""
    run = tmp_path / "run"
    run.mkdir()
    write_checkpoint(run / "best.pt")
    w = train_widget
    load(w, run, qtbot)
    seen = []
    w.session.checkpoint_changed.connect(seen.append)
    w.use_checkpoint()
    assert seen == [str(run / "best.pt")] and w.session.checkpoint == str(run / "best.pt")


def test_best_pt_written_after_last_pt_becomes_the_choice(train_widget, tmp_path, qtbot):
    """The trainer writes last.pt, then best.pt: a refresh in between used to leave the
    combo on last.pt for good (CI saw it). A checkpoint the user picked stays picked."""
    run = tmp_path / "run"
    run.mkdir()
    write_checkpoint(run / "last.pt")
    w = train_widget
    load(w, run, qtbot)
    assert w.selected_checkpoint() == run / "last.pt"
    (run / "best.pt").write_bytes(b"x")
    w._refresh_checkpoints()
    assert w.selected_checkpoint() == run / "best.pt"
    w.checkpoint.value = str(run / "last.pt")  # the user's choice
    (run / "epoch3.pt").write_bytes(b"x")
    w._refresh_checkpoints()
    assert len(w.checkpoint.choices) == 3 and w.selected_checkpoint() == run / "last.pt"


@pytest.mark.slow
@pytest.mark.torch
def test_stop_and_resume_continue_the_steps(train_widget, synth_data, tmp_path, qtbot):
    """A real `napari-vertebra train` process: wait for epoch 1's last.pt, stop (STOP
    file), resume (--resume): the steps and epochs go on from where it stopped."""
    w = train_widget
    _form(w, synth_data, tmp_path / "run")
    run = tmp_path / "run"
    w.epochs.value = 50
    w.device.value = "cpu"
    w.config_overrides = dict(TINY)
    assert w.start(), w.status.value
    assert w.running and (run / "train.pid").is_file()
    qtbot.waitUntil(
        lambda: (run / "last.pt").is_file() and w.run.progress.completed_epochs >= 1,
        timeout=300_000,
    )
    assert w.plot.n_points >= 1 and 2 <= w.progress_bar.value < 100
    with qtbot.waitSignal(w.finished, timeout=120_000) as blocker:
        w.stop()
        assert (run / STOP_NAME).is_file()
    assert blocker.args == [0]
    assert "stopped" in w.status.value and not w.running
    stopped_at = max(_log_epochs(run))
    assert 1 <= stopped_at < 50
    assert "stopped after epoch" in (run / "train.out").read_text(encoding="utf-8")

    assert w.resume(), w.status.value
    assert not (run / STOP_NAME).exists()
    qtbot.waitUntil(lambda: w.run.progress.completed_epochs >= stopped_at + 1, timeout=300_000)
    with qtbot.waitSignal(w.finished, timeout=120_000):
        w.stop()
    epochs = _log_epochs(run)
    assert epochs == list(range(1, len(epochs) + 1))  # continued, never restarted
    assert len(epochs) > stopped_at
    steps = w.run.progress.steps
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= len(epochs)
    assert (run / "train.out").read_text(encoding="utf-8").count("--resume") == 1


def _log_epochs(run: Path) -> list[int]:
    """The epochs of the trainer's RUN/log.csv, row by row."""
    with open(run / "log.csv", encoding="utf-8") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_shipped_configs_are_listed_by_name(train_widget):
    """The package's configurations (also in an installed wheel) are offered by name."""
    from napari_vertebra.model.config import shipped_configs

    w = train_widget
    shipped = shipped_configs()
    assert {"paper", "smoke", "synth-r50"} <= set(w.preset.choices)
    assert w.preset.value == "paper" and w.config_file.value == shipped["paper"]
    w.preset.value = "smoke"
    assert w.config_file.value == shipped["smoke"] and w.backbone.value == "resnet18"
    w.config_file.value = str(SMOKE.with_name("nowhere.yaml"))
    assert w.preset.value not in shipped  # the user's own file
