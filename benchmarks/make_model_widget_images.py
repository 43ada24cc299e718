"""Screenshots of the model widgets in use: docs/images/widget_{train,predict,review}.png.

    xvfb-run -a .venv/bin/python benchmarks/make_model_widget_images.py RUN_DIR

RUN_DIR is a finished ``napari-vertebra train`` run folder (log.csv, best.pt). The
script opens napari with every widget docked (as ``make run`` does), loads the lumbar
sample, preprocesses it, fills the project's polygons from the 3D labels, then:
Train model -> "Load run" of RUN_DIR; Predict vertebrae -> the run's best.pt on the MIP;
Review predictions -> ground truth "MIP labels", two vertebrae accepted, one rejected.
Each image is the whole window, reduced to 256 colours (< 400 KB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _gui import shoot, wait

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a finished training run folder (best.pt, log.csv)")
    p.add_argument("--min-score", type=float, default=0.5, help="Predict's minimum score")
    p.add_argument("-o", "--out", type=Path, default=OUT, help="output folder")
    args = p.parse_args(argv)
    if not (args.run / "best.pt").is_file():
        print(f"error: {args.run}: no best.pt", file=sys.stderr)
        return 2

    import napari

    from napari_vertebra.launch import dock_widgets
    from napari_vertebra.widgets._sample import CT_NAME, LABELS_NAME

    viewer = napari.Viewer(title="napari-vertebra")
    viewer.window._qt_window.resize(1500, 950)
    project = Path(tempfile.mkdtemp(prefix="nv-shots-")) / "project"
    widgets = dock_widgets(viewer, project=project)
    pre, ann = widgets["Preprocess CT"], widgets["Annotate vertebrae"]
    train, predict, review = (
        widgets["Train model"], widgets["Predict vertebrae"], widgets["Review predictions"],
    )  # fmt: skip
    viewer.window._qt_window.show()

    viewer.open_sample("napari-vertebra", "lumbar_ct")
    pre.refresh_choices()
    pre.ct_layer.value = viewer.layers[CT_NAME]
    pre.labels_layer.value = viewer.layers[LABELS_NAME]
    pre.run()
    wait(lambda: not pre.runner.busy)
    mip = pre.mip_layer()
    ann.refresh_choices()
    ann.mip_layer.value = mip
    ann.labels_from_3d()
    wait(lambda: not ann.runner.busy)

    # Train model: the curves and checkpoints of a finished run
    train.load_run(args.run)
    wait(lambda: not train.runner.busy)
    wait(lambda: train.plot.n_draws >= 1 and not train.plot.runner.busy)
    wait(lambda: train.plot.n_draws >= 2, 30)
    shoot(viewer, args.out / "widget_train.png", dock="Train model")

    # Predict vertebrae with the run's best checkpoint
    train.use_checkpoint()
    predict.set_image_layer(mip)
    predict.min_score.value = args.min_score
    predict.run()
    wait(lambda: not predict.busy)
    for layer in viewer.layers:
        if layer.name.startswith(("MIP labels", "vertebrae MIP")):
            layer.visible = False  # the ground truth and the polygons: shown in Review
    viewer.layers.selection.active = predict.labels_layer
    shoot(viewer, args.out / "widget_predict.png", dock="Predict vertebrae")

    # Review predictions: Dice against the 3D labels' MIP, accept two, reject one
    review.refresh()
    review.refresh_choices()
    gt = next((la for la in viewer.layers if la.name.startswith("MIP labels")), None)
    if gt is not None:
        review.ground_truth.value = gt
    # accept two that match the ground truth, reject the misplaced ones, leave the rest;
    # "replace" is the answer to Review's question about the polygons from the 3D labels
    review.ask = lambda *_: "replace"
    accepted = 0
    for i, d in enumerate(review.dice):
        if d is not None and d < 0.5:
            review.reject(i)
        elif accepted < 2:
            review.accept(i)
            accepted += 1
    review.next()
    predict.boxes_layer.visible = False
    shapes = ann.shapes
    if shapes is not None:
        shapes.visible = True
        viewer.layers.selection.active = predict.labels_layer
    shoot(viewer, args.out / "widget_review.png", dock="Review predictions")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
