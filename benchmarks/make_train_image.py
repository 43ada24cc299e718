"""Screenshot of the Train widget mid-run: docs/images/train_progress.png.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/make_train_image.py

Opens napari with the widgets docked (as ``make run`` does, in a temporary project),
writes a small synthetic COCO dataset and starts a real ``napari-vertebra train`` process
from the Train widget (the ``smoke`` configuration, a few steps per epoch, on the CPU).
Once the first epoch is validated and the second is a few steps in, the window is saved:
the progress bar shows the steps of the run, the plot the loss per step and the
validation per epoch. Then the run is stopped and the timings printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _gui import shoot, wait

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images" / "train_progress.png"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", type=Path, default=OUT, help="output PNG")
    p.add_argument("--steps", type=int, default=6, help="steps per epoch")
    args = p.parse_args(argv)

    import napari
    from skimage.io import imread

    from napari_vertebra import launch
    from napari_vertebra.synth import write_synth

    tmp = Path(tempfile.mkdtemp(prefix="nv-train-"))
    data = tmp / "data"
    write_synth(data, 24, size=(256, 128), seed=3)
    viewer = napari.Viewer(title="napari-vertebra")
    viewer.window._qt_window.resize(1500, 1000)
    widgets = launch.dock_widgets(viewer, project=tmp / "project")
    train = widgets["Train model"]
    first = sorted((data / "train").glob("*.png"))[0]
    viewer.add_image(imread(first), name=f"MIP {first.stem}", colormap="gray")
    viewer.window._qt_window.show()

    train.preset.value = "smoke"
    train.data_dir.value = str(data)
    train.run_folder.value = str(tmp / "run")
    train.epochs.value = 3
    train.device.value = "cpu"
    train.config_overrides = {"max_steps_per_epoch": args.steps, "batch_size": 2}
    t0 = time.time()
    if not train.start():
        print("cannot start:", train.status.value, file=sys.stderr)
        return 1
    run = train.run
    try:
        wait(lambda: run.progress.phase == "train", timeout=600)
        t_first = time.time() - t0
        wait(
            lambda: (
                len(run.progress.val_epochs) >= 1
                and run.progress.step >= args.steps + args.steps // 2
            ),
            timeout=1200,
        )
        wait(lambda: not train.plot.runner.busy and train.plot._pending is None)
        # the dock's tab title is short ("Train", launch.TAB_TITLES)
        dock = launch.TAB_TITLES.get("Train model", "Train model")
        shoot(viewer, args.out, dock=dock)
        print(f"first step after {t_first:.1f} s; shot at {time.time() - t0:.1f} s")
        print("bar:", train.progress_bar.value, train.progress_bar.native.format())
        print("status:", train.status.value)
    finally:
        train.stop()
        wait(lambda: not train.running, timeout=300)
        wait(lambda: True)
    print("after stop:", train.status.value)
    train.close_widget()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
