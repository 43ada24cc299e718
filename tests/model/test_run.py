"""The Qt-free training-run controller (napari_vertebra.model.run): progress.jsonl written
by the trainer and read incrementally, run-folder names, launching, stopping and the
reasons a run failed. A small fake trainer (a Python one-liner writing progress lines)
stands in for the real one where only the controller is tested."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from napari_vertebra.model.progress import (
    PROGRESS_NAME,
    ProgressReader,
    ProgressWriter,
    TrainProgress,
    read_progress,
)
from napari_vertebra.model.run import (
    STOP_NAME,
    RunError,
    TrainingRun,
    default_run_dir,
    is_run_folder,
    last_meaningful_line,
)

#: A fake trainer: ``python -c FAKE RUN N [exit-text]`` writes a start event and up to N
#: steps (stopping at RUN/STOP like the real one), then prints exit-text and exits 1 when
#: given, else writes done.
FAKE = r"""
import json, os, sys, time
run, n = sys.argv[1], int(sys.argv[2])
def w(**e):
    with open(os.path.join(run, "progress.jsonl"), "a") as f:
        f.write(json.dumps(e) + "\n")
w(phase="start", epoch=0, epochs=1, step=0, steps_in_epoch=n, total_steps=n)
for k in range(1, n + 1):
    if os.path.exists(os.path.join(run, "STOP")):
        w(phase="stopped", step=k - 1, message="stopped"); sys.exit(0)
    w(phase="train", epoch=1, epochs=1, step=k, step_in_epoch=k, steps_in_epoch=n,
      total_steps=n, loss=1.0 / k, loss_mask=0.5 / k, lr=0.001)
    time.sleep(0.02)
if len(sys.argv) > 3:
    print("Traceback (most recent call last):", file=sys.stderr)
    print('  File "x.py", line 1, in <module>', file=sys.stderr)
    print(sys.argv[3], file=sys.stderr)
    sys.exit(1)
w(phase="done", message="finished")
"""


def _fake(run: Path, n: int, *extra: str) -> list[str]:
    return [sys.executable, "-c", FAKE, str(run), str(n), *extra]


def _wait(predicate, timeout: float = 60.0) -> None:
    """Poll ``predicate`` until it holds (a generous limit: never a timing assertion)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def _step(k: int, n: int = 4, epoch: int = 1, epochs: int = 2) -> dict:
    return dict(phase="train", epoch=epoch, epochs=epochs, step=k,
                step_in_epoch=(k - 1) % n + 1, steps_in_epoch=n, total_steps=n * epochs,
                loss=2.0 / k, loss_mask=1.0 / k, lr=0.001)  # fmt: skip


def test_controller_modules_import_no_qt_napari_or_torch():
    code = (
        "import sys, napari_vertebra.model.run, napari_vertebra.model.cluster\n"
        "bad = [m for m in ('torch', 'napari', 'PyQt6', 'PyQt5', 'qtpy', 'PySide6', "
        "'magicgui', 'torchvision', 'matplotlib') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_reader_leaves_a_partial_last_line_for_the_next_read(tmp_path):
    path = tmp_path / PROGRESS_NAME
    reader = ProgressReader(path)
    assert reader.read() == []  # no file yet
    first, second = json.dumps(_step(1)), json.dumps(_step(2))
    path.write_text(first + "\n" + second[:17], encoding="utf-8")  # mid-write
    assert [e["step"] for e in reader.read()] == [1]
    assert reader.read() == []  # still partial
    with open(path, "a", encoding="utf-8") as f:
        f.write(second[17:] + "\nnot json\n")
    assert [e["step"] for e in reader.read()] == [2]
    assert reader.skipped == 1
    # a new file (a run folder reused) is read from its beginning
    path.unlink()
    path.write_text(json.dumps(_step(1)) + "\n", encoding="utf-8")
    assert [e["step"] for e in reader.read()] == [1] and reader.reset


def test_writer_writes_one_flushed_json_line_per_event(tmp_path):
    w = ProgressWriter(tmp_path / PROGRESS_NAME)
    w.write("train", step=1, loss=float("nan"), lr=0.5)
    lines = (tmp_path / PROGRESS_NAME).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    ev = json.loads(lines[0])
    assert ev["phase"] == "train" and ev["loss"] is None and ev["lr"] == 0.5
    bad = ProgressWriter(tmp_path / "missing" / PROGRESS_NAME)
    bad.write("train", step=1)  # never raises: training must go on
    assert bad.error is not None


def test_progress_folds_steps_epochs_and_a_resume():
    p = TrainProgress()
    p.update([dict(phase="start", epoch=0, epochs=2, step=0, steps_in_epoch=4, total_steps=8)])
    assert p.fraction == 0 and "first step" in p.describe()
    p.update([_step(k) for k in (1, 2, 3)])
    assert p.steps == [1, 2, 3] and p.fraction == pytest.approx(3 / 8)
    assert p.describe() == "epoch 1/2, step 3/4, loss 0.667"
    assert list(p.step_epochs()) == [0.25, 0.5, 0.75]
    p.update([_step(4), dict(phase="validate", epoch=1, epochs=2, step=4)])
    assert p.describe() == "epoch 1/2: validating"
    p.update([dict(phase="epoch", epoch=1, step=4, loss=1.0, val_mask_mAP=0.25, val_id_rate=None)])
    assert p.val_epochs == [1] and p.val["val_mask_mAP"] == [0.25]
    p.update([_step(5, epoch=2), _step(6, epoch=2)])
    # killed after step 6; last.pt was saved at the end of epoch 1: the resumed run
    # repeats steps 5 and 6, which must not be drawn twice
    p.update([dict(phase="start", epoch=1, epochs=2, step=4, steps_in_epoch=4, total_steps=8)])
    assert p.steps == [1, 2, 3, 4] and len(p.losses["loss"]) == 4
    assert "epoch 2/2" in p.describe()
    p.update([_step(5, epoch=2)])
    assert p.steps == [1, 2, 3, 4, 5] and p.val_epochs == [1]


def test_level_check_reads_the_last_validated_epoch():
    from napari_vertebra.model.run import level_check

    p = TrainProgress()
    assert level_check(p) == ("", "")  # nothing validated
    p.update([dict(phase="epoch", epoch=1, step=4, val_id_rate=0.5)])
    assert level_check(p) == ("", "")  # a run from before the check
    epoch = dict(phase="epoch", epoch=2, step=8, val_level_certain_share=0.75)
    p.update([{**epoch, "val_level_certain_id_rate": 0.96}])
    note, warning = level_check(p)
    assert note == "level confidence on the val images: 75% called certain (>= 0.9), " + (
        "identified at 0.96"
    )
    assert warning == ""
    p.update([{**epoch, "epoch": 3, "val_level_certain_id_rate": 0.6}])
    note, warning = level_check(p)
    assert note.endswith("identified at 0.60") and "overstates" in warning
    p.update([{**epoch, "epoch": 4, "val_level_certain_share": 0.0}])  # none called certain
    assert level_check(p) == ("level confidence on the val images: 0% called certain (>= 0.9)", "")
    # how many images it rests on, where the run says (a check on 4 images is rough)
    p.update([{**epoch, "epoch": 5, "val_level_certain_id_rate": 1.0, "val_n_images": 4}])
    assert level_check(p)[0].startswith("level confidence on the 4 val images: 75% called")


def test_run_folder_names_are_new_and_sortable(tmp_path):
    now = time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
    first = default_run_dir(tmp_path, now)
    assert first == tmp_path / "run-20260304-050607"
    first.mkdir()
    assert default_run_dir(tmp_path, now) == tmp_path / "run-20260304-050607-2"
    assert default_run_dir().parent == Path.home() / "napari-vertebra-runs"


def test_start_and_open_say_what_is_wrong(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert TrainingRun.check_start(run, resume=False) == run.resolve()
    with pytest.raises(RunError, match=r"no last\.pt to resume"):
        TrainingRun.check_start(run, resume=True)
    (run / "last.pt").write_bytes(b"x")
    with pytest.raises(RunError, match="already holds a run"):
        TrainingRun.check_start(run, resume=False)
    with pytest.raises(RunError, match="is not a training run"):
        TrainingRun.open(tmp_path / "run" / "..")
    with pytest.raises(RunError, match="no such folder"):
        TrainingRun.open(tmp_path / "nowhere")
    assert is_run_folder(run) and not is_run_folder(tmp_path)


def test_launch_follow_and_stop(tmp_path):
    run = TrainingRun(tmp_path / "run")
    run.launch("epochs: 1\n", tmp_path, command=_fake(tmp_path / "run", 100000))
    try:
        assert run.running and (run.run_dir / "train.pid").is_file()
        assert (run.run_dir / "widget_config.yaml").read_text() == "epochs: 1\n"
        _wait(lambda: (run.refresh(), len(run.progress.steps) >= 2)[1])
        assert run.poll() is None and run.progress.phase == "train"
        assert 0 < run.progress.fraction < 1
        assert run.stop() == "requested" and (run.run_dir / STOP_NAME).is_file()
        outcome = None

        def ended():
            nonlocal outcome
            outcome = run.poll()
            return outcome is not None

        _wait(ended)
    finally:
        run.kill()
    assert outcome.kind == "stopped" and outcome.returncode == 0
    assert "Resume continues" in outcome.message
    assert not (run.run_dir / "train.pid").exists()
    assert run.poll() is None  # the outcome is given once
    assert run.stop() == "not running"


def test_a_failed_run_says_its_last_meaningful_line(tmp_path):
    run = TrainingRun(tmp_path / "run")
    text = "ValueError: the weights file w.pt is damaged"
    run.launch("{}\n", tmp_path, command=_fake(tmp_path / "run", 2, text))
    outcome = None

    def ended():
        nonlocal outcome
        outcome = run.poll()
        return outcome is not None

    _wait(ended)
    assert outcome.kind == "failed" and outcome.returncode == 1
    assert text in outcome.message and "Traceback" not in outcome.message
    assert str(run.run_dir / "train.out") in outcome.message


def test_the_trainers_error_event_wins_over_its_output(tmp_path):
    run = TrainingRun(tmp_path)
    ProgressWriter(tmp_path / PROGRESS_NAME).write("error", message="no train split")
    (tmp_path / "train.out").write_text("error: no train split\nsomething else\n")
    run.refresh()
    assert run.failure_message(2).startswith("training failed: no train split (")
    killed = TrainingRun(tmp_path / "empty")
    assert "killed (SIGKILL, out of memory?)" in killed.failure_message(-9)


def test_last_meaningful_line():
    out = (
        "$ python -m napari_vertebra.cli train\n"
        "/x/train.py:12: UserWarning: the val split is missing\n  warnings.warn(\n"
        "train:  40%|####      | 4/10 [00:04<00:06]\rtrain:  50%|#####     | 5/10\n"
        'Traceback (most recent call last):\n  File "a.py", line 1\n    raise E\n'
        "CheckpointError: w.pt is not a checkpoint\n\n"
    )
    assert last_meaningful_line(out) == "CheckpointError: w.pt is not a checkpoint"
    assert last_meaningful_line("error: bad\n") == "error: bad"
    assert last_meaningful_line("") == ""


# ------------------------------------------------------------------ the real trainer
@pytest.mark.slow
def test_trainer_writes_progress_per_step_and_resumes_it(tiny_data, tiny_config, tmp_path):
    """The real training loop writes progress.jsonl: a line per step (losses, lr), the
    validation metrics per epoch; a stopped and resumed run continues its steps."""
    from napari_vertebra.model.train import train

    run = tmp_path / "run"
    stop = threading.Event()

    def progress(fraction, message):
        if message.startswith("epoch 1/2 step 1/2"):
            stop.set()

    assert train(tiny_config, tiny_data, run, progress=progress, stop=stop)["stopped"]
    state = read_progress(run / PROGRESS_NAME)
    assert state.phase == "stopped" and state.steps == [1]
    assert train(tiny_config, tiny_data, run, resume=True)["epoch"] == 2
    events = [json.loads(x) for x in (run / PROGRESS_NAME).read_text().splitlines()]
    phases = [e["phase"] for e in events]
    assert phases[:4] == ["setup", "start", "train", "stopped"]
    assert phases[-1] == "done" and phases.count("epoch") == 2 and phases.count("start") == 2
    step = next(e for e in events if e["phase"] == "train")
    assert {"loss", "loss_mask", "loss_classifier", "lr", "steps_in_epoch"} <= set(step)
    assert step["total_steps"] == 4 and step["steps_in_epoch"] == 2
    state = read_progress(run / PROGRESS_NAME)
    assert state.steps == [1, 2, 3, 4] and state.val_epochs == [1, 2]
    assert "val_mask_mAP" in state.val and state.fraction == 1.0


@pytest.mark.slow
def test_cli_error_is_written_as_a_plain_error_event(tiny_data, tiny_overrides, tmp_path):
    """A damaged weights file: main() writes the reason into progress.jsonl, in one
    plain sentence (not torch's text), and raises as before."""
    import yaml

    from napari_vertebra.model.train import main

    weights = tmp_path / "random.pt"
    weights.write_bytes(bytes(range(256)) * 64)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**tiny_overrides, "weights": str(weights)}))
    run = tmp_path / "run"
    run.mkdir()
    args = argparse.Namespace(
        config=str(cfg), data=str(tiny_data), output=str(run), resume=False, device="cpu",
        epochs=None, seed=None, overrides=[],
    )  # fmt: skip
    with pytest.raises(ValueError):
        main(args)
    state = read_progress(run / PROGRESS_NAME)
    assert state.phase == "error" and "random.pt" in state.message
    assert "weights_only" not in state.message and "file an issue" not in state.message
    controller = TrainingRun(run)
    controller.refresh()
    assert controller.failure_message(2).startswith("training failed: ")
