"""Screenshots of the level confidence in Predict, Review and Train: docs/images/levels_{predict,
review}.png and train_level_check.png.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python \\
        benchmarks/make_levels_image.py RUN_DIR [--min-score 0.0]

RUN_DIR is a run of ``benchmarks/partial_views.py`` (an ``extended-fixed`` folder: the
extended class set at a fixed physical scale). The script draws an unseen synthetic
partial view (napari_vertebra.synth, 1 mm per pixel), opens napari with every widget
docked (as ``make run`` does), predicts on the view with RUN_DIR/last.pt and shoots the
Predict tab (the "Levels:" line under the list) and the Review tab (the same line above
its table), then loads RUN_DIR in the Train tab (Load run: the curves and the level
check on the val images). Each image is the whole window, reduced to 256 colours.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _gui import shoot, wait

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a partial_views.py run folder (last.pt)")
    p.add_argument("--min-score", type=float, default=0.0, help="Predict's minimum score")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic column")
    p.add_argument("-o", "--out", type=Path, default=OUT, help="output folder")
    args = p.parse_args(argv)
    ckpt = args.run / "last.pt"
    if not ckpt.is_file():
        print(f"error: {args.run}: no last.pt", file=sys.stderr)
        return 2

    import napari

    from napari_vertebra.launch import dock_widgets
    from napari_vertebra.synth import synth_column, synth_views

    rng = np.random.default_rng(args.seed)
    column = synth_column(rng, "extended", name="unseen")
    view = max(synth_views(column, 6, rng), key=lambda v: len(v.annotations))
    truth = ", ".join(a.name for a in view.annotations)
    print(f"view {view.file_name}: truth {truth}")

    viewer = napari.Viewer(title="napari-vertebra")
    viewer.window._qt_window.resize(1500, 950)
    widgets = dock_widgets(viewer)
    predict, review = widgets["Predict vertebrae"], widgets["Review predictions"]
    viewer.window._qt_window.show()
    layer = viewer.add_image(view.image, name="MIP synthetic view", colormap="gray")
    predict.refresh_choices()
    predict.set_checkpoint(ckpt)
    predict.set_image_layer(layer)
    predict.min_score.value = args.min_score
    predict.run()
    wait(lambda: not predict.busy)
    print(f"Predict: {predict.summary.value}")
    viewer.layers.selection.active = predict.labels_layer
    shoot(viewer, args.out / "levels_predict.png", dock="Predict vertebrae")
    review.refresh()
    print(f"Review: {review.levels_label.value}")
    shoot(viewer, args.out / "levels_review.png", dock="Review predictions")
    train = widgets["Train model"]
    assert train.load_run(args.run), train.status.value
    wait(lambda: not train.runner.busy)
    wait(lambda: train.plot.n_draws >= 1 and not train.plot.runner.busy)
    print(f"Train: {train.status.value}")
    shoot(viewer, args.out / "train_level_check.png", dock="Train model")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
