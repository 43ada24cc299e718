"""How long the viewer's event loop stalls while the Predict widget works.

    xvfb-run -a .venv/bin/python benchmarks/widget_gaps.py [--repeat 3]

Opens napari, preprocesses the bundled lumbar sample, builds an untrained smoke model
(random weights: the figure is about the viewer, not the model), and with a 50 ms QTimer
measures the largest gap between its ticks while the Predict widget predicts on the MIP
and while it carries the labels back to 3D, and while the Train widget loads a long run
folder (a progress.jsonl of 40 000 steps, ~11 MB, written here). The tests assert only
what the widgets control (the work runs off the GUI thread,
tests/widgets/test_predict_widget.py, test_train_widget.py); this script prints the
figure, which depends on the machine and its load (a gap under 0.1 s is smooth; on a
loaded 2-core machine the GUI thread waits for the interpreter lock).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _gui import wait


class GapMeter:
    """Largest interval between ticks of a 50 ms QTimer: how long the event loop stalled."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.max_gap = 0.0
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.max_gap = max(self.max_gap, now - self._last)
        self._last = now

    def stop(self) -> float:
        self._timer.stop()
        return self.max_gap


def _checkpoint(folder: Path) -> Path:
    import torch

    from napari_vertebra.model.build import build_model, save_checkpoint
    from napari_vertebra.model.config import load_config
    from napari_vertebra.model.predict_jobs import avoid_triton

    avoid_triton()
    cfg = load_config("smoke", {"min_size": 192, "max_size": 256})
    torch.manual_seed(0)
    path = folder / "random.pt"
    save_checkpoint(path, model=build_model(cfg).state_dict(), config=cfg, epoch=0)
    return path


def _long_run(folder: Path, epochs: int = 100, steps: int = 400) -> Path:
    """A finished run folder whose progress.jsonl holds epochs x steps step events."""
    from napari_vertebra.model.progress import PROGRESS_NAME, ProgressWriter

    run = folder / "long_run"
    run.mkdir()
    (run / "config.yaml").write_text(f"epochs: {epochs}\n", encoding="utf-8")
    writer, total, k = ProgressWriter(run / PROGRESS_NAME), epochs * steps, 0
    writer.write("start", epoch=0, epochs=epochs, step=0, total_steps=total)
    for e in range(1, epochs + 1):
        for s in range(1, steps + 1):
            k += 1
            losses = {f"loss_{n}": 1.0 / k for n in ("classifier", "box_reg", "mask")}
            writer.write("train", epoch=e, epochs=epochs, step=k, step_in_epoch=s,
                         steps_in_epoch=steps, total_steps=total, lr=1e-3, loss=3.0 / k,
                         **losses)  # fmt: skip
        writer.write("epoch", epoch=e, epochs=epochs, step=k, val_id_rate=0.5)
    writer.write("done", epoch=epochs, epochs=epochs, step=k, message="finished")
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="predictions measured (default 3)")
    args = ap.parse_args()

    import napari

    from napari_vertebra.core import read_ct, read_labels, run_pipeline
    from napari_vertebra.widgets._sample import SAMPLE_CT, SAMPLE_LABELS
    from napari_vertebra.widgets.predict import PredictWidget
    from napari_vertebra.widgets.train import TrainWidget

    ct = read_ct(SAMPLE_CT)
    result = run_pipeline(ct, labels=read_labels(SAMPLE_LABELS, like=ct))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(Path(tmp))
        viewer = napari.Viewer(show=True)
        layer = viewer.add_image(result.mip, name="MIP", metadata={"pipeline_result": result})
        widget = PredictWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Predict vertebrae")
        widget.set_checkpoint(ckpt)
        widget.set_image_layer(layer)
        widget.min_score.value = 0.0
        predict, to_3d = [], []
        for _ in range(args.repeat):
            meter = GapMeter()
            assert widget.run(), widget.status.value
            wait(lambda: not widget.busy, 600, settle=0)
            predict.append(meter.stop())
            meter = GapMeter()
            assert widget.show_in_3d(), widget.status.value
            wait(lambda: not widget.busy, 600, settle=0)
            to_3d.append(meter.stop())
        run = _long_run(Path(tmp))
        train = TrainWidget(viewer)
        viewer.window.add_dock_widget(train, name="Train model")
        meter = GapMeter()
        t0 = time.perf_counter()
        assert train.load_run(run), train.status.value
        wait(lambda: not train.runner.busy, 600, settle=0)
        load_s, load_gap = time.perf_counter() - t0, meter.stop()
        assert train.status.level == "ok", train.status.value
        train.close_widget()
        viewer.close()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}")
    print(
        "largest event-loop gap (s): "
        + "  ".join(["run"] + [str(i + 1) for i in range(len(predict))])
    )
    print("  predict on the MIP      " + "  ".join(f"{g:.3f}" for g in predict))
    print("  labels back to 3D       " + "  ".join(f"{g:.3f}" for g in to_3d))
    print(f"  Load run, 40 000 steps  {load_gap:.3f}  (read and shown in {load_s:.1f} s)")


if __name__ == "__main__":
    main()
