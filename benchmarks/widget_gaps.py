"""How long the viewer's event loop stalls while the Predict widget works.

    xvfb-run -a .venv/bin/python benchmarks/widget_gaps.py [--repeat 3]

Opens napari, preprocesses the bundled lumbar sample, builds an untrained smoke model
(random weights: the figure is about the viewer, not the model), and with a 50 ms QTimer
measures the largest gap between its ticks while the Predict widget predicts on the MIP
and while it carries the labels back to 3D. The tests assert only what the widget
controls (the work runs off the GUI thread, tests/widgets/test_predict_widget.py); this
script prints the figure, which depends on the machine and its load (a gap under 0.1 s
is smooth; on a loaded 2-core machine the GUI thread waits for the interpreter lock).
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
    from napari_vertebra.widgets.predict import avoid_triton

    avoid_triton()
    cfg = load_config("smoke", {"min_size": 192, "max_size": 256})
    torch.manual_seed(0)
    path = folder / "random.pt"
    save_checkpoint(path, model=build_model(cfg).state_dict(), config=cfg, epoch=0)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="predictions measured (default 3)")
    args = ap.parse_args()

    import napari

    from napari_vertebra.core import read_ct, read_labels, run_pipeline
    from napari_vertebra.widgets._sample import SAMPLE_CT, SAMPLE_LABELS
    from napari_vertebra.widgets.predict import PredictWidget

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
        viewer.close()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}")
    print(
        "largest event-loop gap (s): "
        + "  ".join(["run"] + [str(i + 1) for i in range(len(predict))])
    )
    print("  predict on the MIP      " + "  ".join(f"{g:.3f}" for g in predict))
    print("  labels back to 3D       " + "  ".join(f"{g:.3f}" for g in to_3d))


if __name__ == "__main__":
    main()
