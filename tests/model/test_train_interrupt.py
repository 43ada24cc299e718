"""Ctrl+C on ``napari-vertebra train``: exit status 130 at once, a resumable ``last.pt``
saved at the interrupted step (issue 19), no temporary file; ``--resume`` goes on from
it. The trainer runs in a subprocess on synthetic MIPs; the timeouts are generous
limits, not speed assertions."""

from __future__ import annotations

import argparse

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.torch]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Splits with 20 train images: 10 steps per epoch of the tiny model."""
    from napari_vertebra.synth import write_synth

    out = tmp_path_factory.mktemp("interrupt_data")
    write_synth(out, 24, size=(96, 48), seed=3, fractions=(20, 2, 2))
    return out


@pytest.mark.parametrize("background", [False, True])
def test_ctrl_c_saves_a_resumable_last_pt(data, tiny_overrides, tmp_path, run_command, background):
    import torch

    from napari_vertebra.model.progress import PROGRESS_NAME, read_progress
    from napari_vertebra.model.train import main

    cfg = tmp_path / "tiny.yaml"
    tiny = {**tiny_overrides, "epochs": 50, "max_steps_per_epoch": None}
    cfg.write_text(yaml.safe_dump(tiny), encoding="utf-8")
    run = tmp_path / "run"
    cmd = run_command(
        ["train", "--config", cfg, "--data", data, "-o", run, "--device", "cpu"],
        background=background,
    )
    progress = run / PROGRESS_NAME
    cmd.wait_for(lambda: progress.is_file() and read_progress(progress).steps)  # a step done
    assert cmd.interrupt() == 130, cmd.output
    assert "interrupted" in cmd.output and "Traceback" not in cmd.output
    assert not cmd.temporary_files(run)
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    state = read_progress(progress)
    assert state.phase == "stopped"  # what a front end following the run shows
    assert ckpt["step"] == state.step >= 1 and ckpt["epoch"] < 50
    # --resume continues from the interrupted step (one more epoch)
    args = argparse.Namespace(
        config=None, data=str(data), output=str(run), resume=True, device="cpu",
        epochs=ckpt["epoch"] + 1, seed=None, overrides=[],
    )  # fmt: skip
    assert main(args) == 0
    resumed = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == ckpt["epoch"] + 1 and resumed["step"] > ckpt["step"]
