"""The "Train model" widget: a real training subprocess, stop and resume, cluster job,
loading a run folder."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from napari_vertebra.widgets.train import (
    STOP_NAME,
    TrainWidget,
    completed_epochs,
    read_log,
    train_command,
    write_cluster_job,
)

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "napari_vertebra" / "configs" / "smoke.yaml"
#: A very small model and run: seconds per epoch on a laptop CPU.
TINY = {
    "min_size": 128,
    "max_size": 128,
    "batch_size": 2,
    "max_steps_per_epoch": 1,
    "val_max_images": 1,
    "workers": 0,
    "warmup_iters": 0,
    "lr_schedule": "constant",
}


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
    # never leave a training process behind
    for proc in [widget.process]:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    widget._timer.stop()


class GapMeter:
    """Largest interval between ticks of a 50 ms QTimer: how long the event loop stalled."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.max_gap = 0.0
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    def _tick(self):
        now = time.perf_counter()
        self.max_gap = max(self.max_gap, now - self._last)
        self._last = now

    def stop(self):
        self._timer.stop()


def test_read_log_ignores_partial_line(tmp_path):
    p = tmp_path / "log.csv"
    assert read_log(p) == {}
    p.write_text("epoch,loss,val_mask_mAP\n1,2.5,0.1\n2,2.0,", encoding="utf-8")
    log = read_log(p)
    assert list(log["epoch"]) == [1.0]
    assert completed_epochs(log) == 1
    p.write_text("epoch,loss,val_mask_mAP\n1,2.5,0.1\n2,2.0,\n", encoding="utf-8")
    log = read_log(p)
    assert list(log["epoch"]) == [1.0, 2.0] and np.isnan(log["val_mask_mAP"][1])


def test_train_command_is_the_cli(tmp_path):
    cmd = train_command(tmp_path / "c.yaml", tmp_path / "d", tmp_path / "r", resume=True,
                        device="cpu")  # fmt: skip
    assert cmd[1:4] == ["-m", "napari_vertebra.cli", "train"]
    assert "--resume" in cmd and cmd[cmd.index("--device") + 1] == "cpu"
    assert cmd[cmd.index("-o") + 1] == str(tmp_path / "r")


def test_fields_follow_the_config_and_override_it(train_widget, tmp_path):
    w = train_widget
    w.config_file.value = str(SMOKE)
    w._fill_from_config()
    assert w.backbone.value == "resnet18"
    w.epochs.value = 3
    w.lr.value = 0.0005
    w.config_overrides = {"min_size": 160}
    cfg = w.config()
    assert cfg["epochs"] == 3 and cfg["lr"] == pytest.approx(0.0005)
    assert cfg["min_size"] == 160 and cfg["backbone"] == "resnet18"
    w.weights.value = str(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing\.pt"):
        w.config()


def test_start_refuses_bad_input(train_widget, tmp_path, monkeypatch):
    w = train_widget
    w.data_dir.value = str(tmp_path)  # no train/ split
    w.run_folder.value = str(tmp_path / "run")
    # the paper configuration names detectron2's COCO R101 file, which is not here
    monkeypatch.chdir(tmp_path)
    assert w.preset.value == "paper" and w.weights.value is not None
    assert not w.start()
    assert "model_final_a3ec72.pkl: no such file" in w.status.value
    assert "random weights" in w.status.value and w.status.level == "error"
    w.weights.value = None  # train from random weights: the next problem is the data
    assert not w.start()
    assert "train/annotations.json" in w.status.value and w.status.level == "error"
    assert w.process is None
    assert not w.resume()  # nothing to resume
    assert "last.pt" in w.status.value


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


def test_load_run_shows_curves_and_checkpoints(train_widget, tmp_path, qtbot):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text(
        "epoch,step,loss,loss_mask,val_box_mAP,val_mask_mAP\n"
        "1,5,3.0,1.0,0.1,0.05\n2,10,2.0,0.8,0.3,0.2\n3,15,1.5,0.6,0.4,0.35\n",
        encoding="utf-8",
    )
    (run / "config.yaml").write_text("epochs: 6\nbackbone: resnet50\n", encoding="utf-8")
    (run / "last.pt").write_bytes(b"x")
    (run / "best.pt").write_bytes(b"x")
    w = train_widget
    w.load_run(run)
    assert w.plot.n_rows == 3
    assert completed_epochs(w.log) == 3
    assert w.progress_bar.value == 50  # 3 of 6 epochs
    assert w.selected_checkpoint() == run / "best.pt"  # best first
    assert [Path(v).name for v in w.checkpoint.choices] == ["best.pt", "last.pt"]
    assert w.backbone.value == "resnet50"
    w.plot.wait()
    qtbot.waitUntil(lambda: w.plot.n_draws >= 2)  # the empty plot, then the log
    lines = w.plot.ax_loss.get_lines()
    assert {ln.get_label() for ln in lines} >= {"loss (total)", "mask"}
    assert len(w.plot.ax_map.get_lines()) == 2  # box and mask mAP


def test_load_run_on_a_folder_that_is_not_a_run_says_so(train_widget, tmp_path):
    """It used to say, in green, "loaded 0 epochs"."""
    w = train_widget
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"x")
    w.load_run(tmp_path / "photos")
    assert w.status.level == "error" and "is not a training run" in w.status.value
    w.load_run(tmp_path / "nowhere")
    assert w.status.level == "error" and "no such folder" in w.status.value


@pytest.mark.slow
def test_stop_and_resume_continue_the_epochs(train_widget, synth_data, tmp_path, qtbot):
    """A real `napari-vertebra train` process: wait for epoch 1's last.pt, stop (STOP
    file), resume (--resume): the log's epochs go on from where it stopped."""
    w = train_widget
    w.config_file.value = str(SMOKE)
    w.data_dir.value = str(synth_data)
    run = tmp_path / "run"
    w.run_folder.value = str(run)
    w.epochs.value = 50
    w.device.value = "cpu"
    w.config_overrides = dict(TINY)
    gaps = GapMeter()
    assert w.start(), w.status.value
    assert w.running and (run / "train.pid").is_file()
    qtbot.waitUntil(
        lambda: (run / "last.pt").is_file() and completed_epochs(w.log) >= 1, timeout=180_000
    )
    assert w.plot.n_rows >= 1 and w.progress_bar.value >= 2
    with qtbot.waitSignal(w.finished, timeout=120_000) as blocker:
        w.stop()
        assert (run / STOP_NAME).is_file()
    assert blocker.args == [0]
    assert "stopped" in w.status.value and not w.running
    stopped_at = completed_epochs(read_log(run / "log.csv"))
    assert 1 <= stopped_at < 50
    assert "stopped after epoch" in (run / "train.out").read_text(encoding="utf-8")

    assert w.resume(), w.status.value
    assert not (run / STOP_NAME).exists()
    qtbot.waitUntil(lambda: completed_epochs(w.log) >= stopped_at + 1, timeout=180_000)
    with qtbot.waitSignal(w.finished, timeout=120_000):
        w.stop()
    gaps.stop()
    epochs = list(read_log(run / "log.csv")["epoch"].astype(int))
    assert epochs == list(range(1, len(epochs) + 1))  # continued, never restarted
    assert len(epochs) > stopped_at
    assert (run / "train.out").read_text(encoding="utf-8").count("--resume") == 1
    print(f"train stop/resume: max event-loop gap {gaps.max_gap:.3f} s, stopped at {stopped_at}")
    assert gaps.max_gap < 0.5, f"event loop blocked {gaps.max_gap:.2f} s"


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
