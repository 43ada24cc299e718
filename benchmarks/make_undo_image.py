"""Screenshot of the Annotate widget's undo history: docs/images/annotate_undo.png.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/make_undo_image.py

Opens napari with the widgets docked (as ``make run`` does, in a temporary project),
loads the lumbar sample, preprocesses it and fills the polygons from its 3D labels; then
deletes one polygon, shifts every level up and undoes the shift, so that the history
list shows each kind of step (the undone one greyed, redo available) next to the
Undo / Redo buttons and the "autosaved HH:MM:SS" line. The image is the whole window.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _gui import shoot, wait

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images" / "annotate_undo.png"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", type=Path, default=OUT, help="output PNG")
    args = p.parse_args(argv)

    import napari

    from napari_vertebra import launch
    from napari_vertebra.widgets._view import fit_to_layer

    viewer = napari.Viewer(title="napari-vertebra")
    viewer.window._qt_window.resize(1500, 1000)
    project = Path(tempfile.mkdtemp(prefix="nv-undo-")) / "project"
    widgets = launch.dock_widgets(viewer, project=project)
    pre, ann = widgets["Preprocess CT"], widgets["Annotate vertebrae"]
    viewer.window._qt_window.show()
    ready: list[bool] = []
    launch.start_demo(viewer, widgets, on_ready=lambda: ready.append(True))
    wait(lambda: bool(ready))
    if ann.shapes is None or not len(ann.shapes.data):
        print("the demo did not finish:", ann.status.value, file=sys.stderr)
        return 1

    # a few steps: delete the lowest polygon, shift every level up, undo the shift
    rows = [float(np.asarray(d)[:, 0].mean()) for d in ann.shapes.data]
    ann.shapes.selected_data = {int(np.argmax(rows))}
    ann.delete_selected()
    ann.shift_levels(-1)
    ann.undo()
    labels = pre.result_layers.get("mip_labels")
    if labels is not None:
        labels.visible = False
    viewer.layers.selection.active = ann.shapes
    ann.shapes.mode = "select"
    fit_to_layer(viewer, pre.mip_layer())
    ann._scroll.ensureWidgetVisible(ann.history_list)
    shoot(viewer, args.out, dock="Annotate vertebrae")
    print("history:", ann._history().labels(), "cursor", ann._history().cursor)
    print("status:", ann.status.value, "|", ann.autosave_label.value)
    ann.close_widget()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
