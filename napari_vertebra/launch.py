"""Open napari with the napari-vertebra widgets docked, on the bundled sample CT.

``python -m napari_vertebra.launch`` (what ``make run`` calls) loads the lumbar CT
sample with its vertebra labels, runs "Preprocess CT" on it, fills the MIP's polygons
from the 3D labels (unless the project already holds polygons for this MIP) and predicts
on the MIP with the Predict widget's checkpoint (the shipped starter model, or
``--checkpoint``).
It then shows the first screen ready to annotate: the Annotate tab, the polygons layer
active and on top (names visible), the MIP alone (no slice slider of the hidden CT).

Options: ``--checkpoint PATH`` (handed to the Predict widget when it exists),
``--project DIR`` (annotation project folder), ``--no-sample``, ``--screenshot PNG``
(wait for the preprocessing, the labels and the prediction, save a window screenshot,
exit).
Without a display it prints how to run headless and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

#: Short dock-tab titles (six tabs side by side stay readable) of the manifest's titles.
TAB_TITLES = {
    "Preprocess CT": "Preprocess",
    "Annotate vertebrae": "Annotate",
    "Export dataset": "Export",
    "Train model": "Train",
    "Predict vertebrae": "Predict",
    "Review predictions": "Review",
}

#: (module, class, dock title) of the optional widgets written later.
OPTIONAL_WIDGETS = (
    ("napari_vertebra.widgets.train", "TrainWidget", "Train model"),
    ("napari_vertebra.widgets.predict", "PredictWidget", "Predict vertebrae"),
    ("napari_vertebra.widgets.review", "ReviewWidget", "Review predictions"),
)

HEADLESS_HELP = """\
napari-vertebra: no display found ($DISPLAY / $WAYLAND_DISPLAY are not set).

To open the napari widgets on a virtual screen:
    xvfb-run -a make run
    xvfb-run -a make run ARGS="--screenshot window.png"   # save a screenshot and exit

To work without a GUI, use the command line:
    napari-vertebra preprocess napari_vertebra/_sample_data/example_ct.nii.gz -o out/
    napari-vertebra labels-to-coco --help
    napari-vertebra --help
"""


def has_display() -> bool:
    """True where Qt can open a window (always outside Linux)."""
    if not sys.platform.startswith("linux"):
        return True
    if os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m napari_vertebra.launch",
        description="Open napari with the napari-vertebra widgets on the sample CT.",
    )
    p.add_argument("--checkpoint", type=Path, help="model checkpoint for the Predict widget")
    p.add_argument("--project", type=Path, help="annotation project folder")
    p.add_argument("--no-sample", action="store_true", help="start without the sample CT")
    p.add_argument(
        "--screenshot", type=Path, help="save a window screenshot (PNG) when ready, then exit"
    )
    p.add_argument(
        "--size", default="1500x950", help="window size WxH in pixels (default 1500x950)"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="screenshot mode: give up (s)")
    return p


def _optional_widget(module: str, cls: str, viewer: Any, checkpoint: Path | None) -> Any:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    factory = getattr(mod, cls, None)
    if factory is None:
        return None
    if checkpoint is not None and cls == "PredictWidget":
        try:
            return factory(viewer, checkpoint=str(checkpoint))
        except TypeError:
            widget = factory(viewer)
            field = getattr(widget, "checkpoint", None)
            if field is not None and hasattr(field, "value"):
                field.value = str(checkpoint)
            return widget
    return factory(viewer)


def open_viewer(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """A new viewer with every widget docked (see :func:`dock_widgets`)."""
    import napari

    viewer = napari.Viewer(title="napari-vertebra")
    try:
        w, h = (int(v) for v in str(args.size).lower().split("x"))
        viewer.window._qt_window.resize(w, h)
    except (ValueError, AttributeError):
        pass
    return viewer, dock_widgets(viewer, args.project, args.checkpoint)


def dock_widgets(
    viewer: Any, project: Path | None = None, checkpoint: Path | None = None
) -> dict[str, Any]:
    """Dock Preprocess / Annotate / Export (+ Train / Predict / Review when present),
    tabbed on the right under short tab titles (:data:`TAB_TITLES`), the Annotate tab in
    front; returns {manifest title: widget}."""
    from napari_vertebra.widgets.annotate import AnnotateWidget
    from napari_vertebra.widgets.export import ExportDatasetWidget
    from napari_vertebra.widgets.preprocess import PreprocessWidget

    widgets: dict[str, Any] = {}
    widgets["Preprocess CT"] = PreprocessWidget(viewer)
    widgets["Annotate vertebrae"] = AnnotateWidget(viewer, project_dir=project)
    widgets["Export dataset"] = ExportDatasetWidget(viewer, project_dir=project)
    for module, cls, title in OPTIONAL_WIDGETS:
        try:
            widget = _optional_widget(module, cls, viewer, checkpoint)
        except Exception as e:  # a broken optional widget must not stop the launcher
            print(f"napari-vertebra: could not open {title}: {e}", file=sys.stderr)
            widget = None
        if widget is not None:
            widgets[title] = widget
    docks = {}
    for title, widget in widgets.items():
        docks[title] = viewer.window.add_dock_widget(
            widget, name=TAB_TITLES.get(title, title), area="right", tabify=bool(docks)
        )
    _readable_tabs(viewer)
    docks["Annotate vertebrae"].raise_()
    return widgets


def _readable_tabs(viewer: Any) -> None:
    """Dock tab titles in full (scroll buttons when the dock is narrow), never "Tr…"."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QTabBar

    window = getattr(getattr(viewer, "window", None), "_qt_window", None)
    if window is None:
        return
    for bar in window.findChildren(QTabBar):
        bar.setElideMode(Qt.TextElideMode.ElideNone)
        bar.setUsesScrollButtons(True)


def show_first_screen(viewer: Any) -> None:
    """Ready to annotate: the Annotate tab in front, the polygons layer active (P draws)
    and on top of the MIP's other layers (its names visible), readable tab titles."""
    from napari_vertebra.widgets._session import session_for

    _readable_tabs(viewer)
    dock = viewer.window._wrapped_dock_widgets.get(TAB_TITLES["Annotate vertebrae"])
    if dock is not None:
        dock.raise_()
    polygons = session_for(viewer).polygons
    if polygons is None or polygons.layer not in viewer.layers:
        return
    layers = viewer.layers
    i = layers.index(polygons.layer)
    if i != len(layers) - 1:
        layers.move(i, len(layers))
    layers.selection.active = polygons.layer


def start_demo(viewer: Any, widgets: dict[str, Any], on_ready: Any = None) -> None:
    """Load the sample, preprocess it, fill the MIP polygons from its 3D labels and, when
    Predict has a checkpoint (the shipped starter model by default), predict on the MIP;
    ``on_ready`` once all of it has been shown."""
    from napari_vertebra.widgets._sample import CT_NAME, LABELS_NAME

    viewer.open_sample("napari-vertebra", "lumbar_ct")
    pre = widgets["Preprocess CT"]
    pre.refresh_choices()
    pre.ct_layer.value = viewer.layers[CT_NAME]
    pre.labels_layer.value = viewer.layers[LABELS_NAME]
    pending = {"preprocess"}

    def part_done(name: str) -> None:
        if name in pending:
            pending.discard(name)
            if not pending:
                show_first_screen(viewer)
                _ready(on_ready)

    def after_preprocess(_result: Any) -> None:
        mip = pre.mip_layer()
        if mip is not None:
            pending.update(("labels", "predict"))
            _predict_demo(widgets.get("Predict vertebrae"), mip, lambda: part_done("predict"))
            _labels_demo(viewer, widgets["Annotate vertebrae"], mip, lambda: part_done("labels"))
        part_done("preprocess")

    pre.runner.succeeded.connect(after_preprocess)
    pre.runner.failed.connect(lambda _e: part_done("preprocess"))
    pre.run()


def _labels_demo(viewer: Any, ann: Any, mip: Any, done: Any) -> None:
    """Annotate on ``mip``: its polygons from the project, else from the 3D labels."""
    from napari_vertebra.widgets._session import session_for

    ann.refresh_choices()
    ann.mip_layer.value = mip
    polygons = session_for(viewer).polygons
    if polygons is not None and len(polygons.layer.data):
        done()  # polygons restored from the project
        return
    ann.runner.succeeded.connect(lambda _im: done())
    ann.runner.failed.connect(lambda _e: done())
    if not ann.labels_from_3d():
        done()


def _predict_demo(predict: Any, mip: Any, done: Any) -> None:
    """Predict on ``mip`` when the Predict widget has a checkpoint; ``done`` once its
    layers are shown (or it failed, or there was nothing to do)."""
    from qtpy.QtCore import QTimer

    if predict is None or not getattr(predict, "checkpoint", None) or not predict.checkpoint.value:
        done()
        return

    def when_shown(_out: Any = None) -> None:
        if predict.busy:  # the result layers are added one per event-loop turn
            QTimer.singleShot(100, when_shown)
        else:
            done()

    predict.runner.succeeded.connect(when_shown)
    predict.runner.failed.connect(lambda _e: done())
    predict.set_image_layer(mip)
    if not predict.run():
        done()


def _ready(callback: Any) -> None:
    if callback is not None:
        callback()


def _screenshot_when_ready(viewer: Any, widgets: dict[str, Any], path: Path, timeout: float):
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    state = {"done": False}

    def shoot() -> None:
        if state["done"]:
            return
        state["done"] = True
        show_first_screen(viewer)
        QApplication.processEvents()
        path.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(path), canvas_only=False)
        print(f"screenshot saved: {path}")
        QTimer.singleShot(200, viewer.close)

    def give_up() -> None:
        if not state["done"]:
            print("napari-vertebra: timed out waiting for the demo", file=sys.stderr)
            state["done"] = True
            state["failed"] = True
            viewer.close()

    QTimer.singleShot(int(timeout * 1000), give_up)
    return lambda: QTimer.singleShot(500, shoot), state


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 without a display)."""
    args = build_parser().parse_args(argv)
    if not has_display():
        print(HEADLESS_HELP, file=sys.stderr)
        return 2
    import napari

    viewer, widgets = open_viewer(args)
    state: dict = {}
    on_ready = None
    if args.screenshot is not None:
        on_ready, state = _screenshot_when_ready(viewer, widgets, args.screenshot, args.timeout)
    if not args.no_sample:
        start_demo(viewer, widgets, on_ready)
    elif on_ready is not None:
        on_ready()
    napari.run()
    return 1 if state.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
