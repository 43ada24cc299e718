"""Regenerate the widget screenshots of the README: docs/images/widget_*.png.

Run with a display or a virtual one::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py

It opens napari with the widgets docked, loads the bundled sample CT, runs "Preprocess
CT", fills the MIP polygons from the 3D labels and builds a small dataset (all in a
temporary project), saving one window screenshot per widget. PNGs over 400 KB are
reduced to a 256-colour palette.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 400_000


def _wait(predicate, timeout: float = 300.0) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    while not predicate():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("timed out waiting for a widget")


def _settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.02)


def _save(viewer, path: Path) -> None:
    import numpy as np
    from PIL import Image

    _settle()
    img = viewer.screenshot(canvas_only=False, flash=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(np.asarray(img)[..., :3])
    pil.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        pil.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"{shown}: {pil.size[0]}x{pil.size[1]}, {path.stat().st_size} bytes")


def _raise(viewer, title: str) -> None:
    from napari_vertebra.launch import TAB_TITLES

    dock = viewer.window._wrapped_dock_widgets.get(TAB_TITLES.get(title, title))
    if dock is not None:
        dock.raise_()


def _add_test_scans(project) -> None:
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.core.io import read_ct, read_labels

    data = ROOT / "tests" / "data"
    scans = [
        (
            data / "tptbox-l3" / "sub-ct_label-22_ct.nii.gz",
            data / "tptbox-l3" / "sub-ct_seg-vert_label-22_msk.nii.gz",
            "verse",
            "tptbox_l3",
        ),
        (
            data / "totalseg-dicom" / "example_ct_dicom",
            data / "totalseg-dicom" / "example_seg_dicom.nii.gz",
            "totalsegmentator",
            "totalseg_dicom",
        ),
    ]
    for ct_path, lab_path, convention, scan in scans:
        ct = read_ct(ct_path)
        im = labels_to_annotations(ct, read_labels(lab_path, like=ct), convention, scan=scan)
        key = f"{scan}_{im.height}x{im.width}"
        project.add_image(key, im.image, scan=scan)
        project.save(key, im.annotations)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--size", default="1400x900", help="window size WxH")
    args = parser.parse_args(argv)

    import napari

    from napari_vertebra import launch
    from napari_vertebra.widgets._view import fit_to_layer

    tmp = Path(tempfile.mkdtemp(prefix="napari-vertebra-shots-"))
    viewer = napari.Viewer(title="napari-vertebra")
    w, h = (int(v) for v in args.size.split("x"))
    viewer.window._qt_window.resize(w, h)
    widgets = launch.dock_widgets(viewer, project=tmp / "project")
    pre, ann = widgets["Preprocess CT"], widgets["Annotate vertebrae"]
    exp = widgets["Export dataset"]
    ready: list[bool] = []
    launch.start_demo(viewer, widgets, on_ready=lambda: ready.append(True))
    _wait(lambda: bool(ready))
    if pre.result is None or ann.shapes is None:
        print("the demo did not finish:", pre.status.value, ann.status.value, file=sys.stderr)
        return 1

    # 0. Preprocess CT, the 3D steps: an axial slice of the windowed volume at mid-spine
    #    with the canal centres (found: cyan, carried: magenta) and the crop box
    _raise(viewer, "Preprocess CT")
    ann.shapes.visible = False
    pre.show_volume()
    r = pre.result
    found = r.canal_found.nonzero()[0]
    z = int(found[len(found) // 2]) if len(found) else r.windowed.shape[0] // 2
    world_z = r.windowed.index_to_physical([z, 0, 0])[2]  # LPS z (mm)
    viewer.dims.set_point(0, world_z)
    viewer.layers.selection.active = pre.result_layers["windowed"]
    _settle()
    fit_to_layer(viewer, pre.result_layers["box"], margin=0.25)
    _save(viewer, args.out / "widget_preprocess_volume.png")

    # 1. Preprocess CT: the MIP with the projected labels, the widget after a run
    _raise(viewer, "Preprocess CT")
    ann.shapes.visible = False
    pre.show_mip()
    viewer.layers.selection.active = pre.mip_layer()
    _settle()
    fit_to_layer(viewer, pre.mip_layer())
    _save(viewer, args.out / "widget_preprocess.png")

    # 2. Annotate vertebrae: class polygons on the MIP
    _raise(viewer, "Annotate vertebrae")
    ann.shapes.visible = True
    labels = pre.result_layers.get("mip_labels")
    if labels is not None:
        labels.visible = False
    ann.vertebra.value = "T12"
    viewer.layers.selection.active = ann.shapes
    _settle()
    fit_to_layer(viewer, pre.mip_layer())
    _save(viewer, args.out / "widget_annotate.png")

    # 3. Export dataset: partial views and splits from the project, with two more scans
    #    (the test CTs, annotated from their 3D labels) so that every split gets one
    _add_test_scans(ann.project)
    _raise(viewer, "Export dataset")
    exp.output_dir.value = str(tmp / "dataset")
    exp.views_per_image.value = 5
    if not exp.build():
        print("export did not start:", exp.status.value, file=sys.stderr)
        return 1
    _wait(lambda: not exp.runner.busy)
    _save(viewer, args.out / "widget_export.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
