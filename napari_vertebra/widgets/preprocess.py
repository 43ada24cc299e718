"""The "Preprocess CT" dock widget: run the pipeline and show every step as a layer.

CT Image layer (+ optional Labels layer carried through) -> :func:`run_pipeline` on a
worker thread -> layers "windowed <ct>" (1 mm), "canal centres <ct>" (Points: found in
cyan, interpolated in magenta), "crop box <ct>" (Shapes path along the box edges),
"MIP <ct>" (2D, head up, anterior left) and, with labels, "MIP labels <ct>". Changing a
parameter re-runs only the steps from the first one that uses it (``previous=``); the
layers are updated in place.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
import weakref
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, LineEdit, PushButton, SpinBox
from qtpy.QtCore import QTimer

from napari_vertebra.core import STEP_PARAMS, STEPS, PipelineResult, PreprocessParams
from napari_vertebra.core.labels import NUM_CLASSES, to_class_map
from napari_vertebra.core.volume import Volume

from ._base import VertebraWidget, layer_combo
from ._layers import (
    class_label_colormap,
    class_label_features,
    find_layer,
    geometry_metadata,
    layer_kwargs,
    same_layer,
    unwrap,
    upsert_layer,
    volume_from_layer,
)
from ._threading import error_message

if TYPE_CHECKING:  # napari passes the viewer to a parameter annotated like this
    import napari.viewer

__all__ = [
    "LABEL_CONVENTIONS",
    "PreprocessWidget",
    "box_edges_path",
    "box_rectangles",
    "guess_convention",
    "mip_labels",
    "result_for_layer",
    "steps_to_rerun",
]

#: Choices of the labels-convention picker.
LABEL_CONVENTIONS = ("auto", "class ids", "totalsegmentator", "verse")

#: Fields shown under "advanced" (the others are always visible).
_ADVANCED = {
    "interpolator",
    "canal_max_elongation",
    "canal_outlier_mm",
    "min_cluster_separation_mm",
    "kmeans_seed",
    "kmeans_n_init",
}
#: (min, max, step) of the numeric fields; others fall back on their unit.
_RANGES: dict[str, tuple[float, float, float]] = {
    "spacing_mm": (0.25, 5.0, 0.25),
    "hu_min": (-1024.0, 3000.0, 10.0),
    "hu_max": (-1000.0, 4000.0, 10.0),
    "canal_r_min_mm": (0.5, 40.0, 0.5),
    "canal_r_max_mm": (1.0, 60.0, 0.5),
    "canal_max_elongation": (1.0, 20.0, 0.1),
    "n_clusters": (1, 10, 1),
    "kmeans_seed": (0, 1_000_000, 1),
    "kmeans_n_init": (1, 100, 1),
}
_LABELS = {
    "spacing_mm": "voxel size (mm)",
    "hu_min": "HU window min",
    "hu_max": "HU window max",
    "canal_r_min_mm": "canal Rmin (mm)",
    "canal_r_max_mm": "canal Rmax (mm)",
    "n_clusters": "k-means k",
    "crop_margin_lr_mm": "margin left-right (mm)",
    "crop_margin_anterior_mm": "margin anterior (mm)",
    "crop_margin_posterior_mm": "margin posterior (mm)",
}
_STEP_TITLES = {
    "resample": "1 resample",
    "window": "2 HU window",
    "canal": "3 spinal canal + k-means",
    "crop": "4 crop",
    "mip": "5 sagittal MIP",
}
FOUND_COLOUR = "#00e5ff"
CARRIED_COLOUR = "#ff4fd8"
BOX_COLOUR = "#ffd400"


#: {MIP layer: the PipelineResult it shows}, for the annotate widget (labels from 3D).
_RESULTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def result_for_layer(layer: Any) -> PipelineResult | None:
    """The pipeline result a "MIP <ct>" layer shows (None for other layers)."""
    if layer is None:
        return None
    try:
        return _RESULTS.get(unwrap(layer))
    except TypeError:
        return None


# ----------------------------------------------------------------------------- pure helpers
def steps_to_rerun(
    old: PreprocessParams | None, new: PreprocessParams, same_input: bool = True
) -> list[str]:
    """The pipeline steps that re-run when ``old`` parameters become ``new``.

    A step re-runs when one of its own parameters or an earlier step's changed (all of
    them without ``old`` or when the input is new).
    """
    if old is None or not same_input:
        return list(STEPS)
    for i, step in enumerate(STEPS):
        if any(getattr(old, n) != getattr(new, n) for n in STEP_PARAMS[step]):
            return list(STEPS[i:])
    return []


def guess_convention(array: np.ndarray) -> str:
    """Which label convention a 3D label array most likely uses.

    "class ids" when every value is in 0..17; "totalsegmentator" when values above 24
    (TotalSegmentator's vertebrae are 27..50) occur; "verse" otherwise.
    """
    hi = int(np.max(array, initial=0))
    if hi < NUM_CLASSES:
        return "class ids"
    return "totalsegmentator" if hi > 24 else "verse"


def mip_labels(result: PipelineResult) -> np.ndarray | None:
    """The class label of the voxel behind each MIP pixel (2D uint8), or None without labels."""
    if result.labels_cropped is None:
        return None
    lab = np.asarray(result.labels_cropped.array)[::-1]  # rows: superior first, like the MIP
    out = np.take_along_axis(lab, result.mip_argmax_x[..., None].astype(np.intp), axis=2)[..., 0]
    out = np.where(result.mip > 0, out, 0)
    return out.astype(np.uint8)


def box_edges_path(box: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(16, 3) (z, y, x) voxel vertices of one path through all 12 edges of a crop box.

    Half-open voxel ranges become the box around the voxel centres (``z1 - 1``). Sliced
    in 2D the path shows the box's outline on every slice it spans; in 3D its edges.
    """
    (z0, z1), (y0, y1), (x0, x1) = box
    z1, y1, x1 = z1 - 1, y1 - 1, x1 - 1
    b = [(z0, y0, x0), (z0, y1, x0), (z0, y1, x1), (z0, y0, x1)]
    t = [(z1, y, x) for _, y, x in b]
    path = [b[0], b[1], b[2], b[3], b[0], t[0], t[1], b[1], t[1], t[2], b[2], t[2], t[3], b[3]]
    path += [t[3], t[0]]
    return np.asarray(path, float)


def box_rectangles(box: tuple[tuple[int, int], ...]) -> list[np.ndarray]:
    """One (4, 3) (z, y, x) rectangle per axial slice of a crop box (its 2D outline)."""
    (z0, z1), (y0, y1), (x0, x1) = box
    corners = np.array([[y0, x0], [y0, x1 - 1], [y1 - 1, x1 - 1], [y1 - 1, x0]], float)
    return [np.column_stack([np.full(4, float(z)), corners]) for z in range(z0, z1)]


def _field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comments above each dataclass field (used as tooltips)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in src.splitlines():
        s = line.strip()
        if s.startswith("#:"):
            pending.append(s[2:].strip())
            continue
        m = re.match(r"^(\w+)\s*:", s)
        if m and pending:
            docs[m.group(1)] = " ".join(pending)
        if not s.startswith("#"):
            pending = []
    # a comment block may cover several fields written one after another
    names = [f.name for f in dataclasses.fields(cls)]
    last = ""
    for n in names:
        if n in docs:
            last = docs[n]
        elif last:
            docs[n] = last
    return docs


def _make_field(f: dataclasses.Field, hint: Any, doc: str) -> Any:
    label = _LABELS.get(f.name, f.name.replace("_mm", " (mm)").replace("_", " "))
    default = f.default
    if hint is bool or isinstance(default, bool):
        w = CheckBox(value=bool(default), label=label)
    elif hint is int or isinstance(default, int):
        lo, hi, step = _RANGES.get(f.name, (0, 1_000_000, 1))
        w = SpinBox(value=int(default), min=int(lo), max=int(hi), step=int(step), label=label)
    elif hint is float or isinstance(default, float):
        unit_default = (0.0, 500.0, 1.0) if f.name.endswith("_mm") else (-1e6, 1e6, 0.1)
        lo, hi, step = _RANGES.get(f.name, unit_default)
        w = FloatSpinBox(value=float(default), min=lo, max=hi, step=step, label=label)
    elif f.name == "interpolator":
        w = ComboBox(value=default, choices=["linear", "nearest", "bspline"], label=label)
    elif typing.get_origin(hint) is typing.Literal:
        w = ComboBox(value=default, choices=list(typing.get_args(hint)), label=label)
    else:
        w = LineEdit(value=str(default), label=label)
    if doc:
        w.tooltip = doc
    return w


# ----------------------------------------------------------------------------- widget
class PreprocessWidget(VertebraWidget):
    """Preprocess CT: resample, HU window, spinal canal, crop, sagittal MIP.

    Attributes (for tests and other widgets): ``ct_layer`` / ``labels_layer`` /
    ``labels_convention`` (pickers), ``param_widgets`` ({field name: value widget}, built
    from :class:`PreprocessParams`), ``auto_rerun`` (CheckBox: re-run after a parameter
    change, debounced ``debounce_ms``), ``run_button``, ``defaults_button``,
    ``view_button`` (MIP <-> volume), ``progress_bar``, ``status``, ``runner``,
    ``result`` (the last :class:`PipelineResult`), ``last_rerun`` (steps that ran last),
    ``result_layers`` ({role: layer}). Handlers: :meth:`run`, :meth:`params`,
    :meth:`set_params`, :meth:`show_mip`, :meth:`show_volume`.
    """

    debounce_ms = 500

    def __init__(self, viewer: napari.viewer.Viewer, parent: Any = None):
        super().__init__(viewer, parent)
        self.result: PipelineResult | None = None
        self.last_rerun: list[str] = []
        self.result_layers: dict[str, Any] = {}
        self.n_runs = 0
        self._volume_cache: dict[str, tuple[tuple, Volume]] = {}
        self._pending = False
        self._ct_name = ""
        self._ct_layer_ref: Any = None
        self._planned: list[str] = []
        self._warned: tuple[int, tuple[str, ...]] | None = None  # last warnings notified

        self.ct_layer = layer_combo(viewer, "Image", "CT image")
        self.labels_layer = layer_combo(viewer, "Labels", "labels (optional)", nullable=True)
        self.labels_convention = ComboBox(
            value="auto", choices=list(LABEL_CONVENTIONS), label="label ids"
        )
        self.labels_convention.tooltip = (
            "How the label map numbers vertebrae: class ids 1..17 (T1..L5), "
            "TotalSegmentator v2 or VerSe; 'auto' guesses from the values."
        )
        self.add_form(self.ct_layer, self.labels_layer, self.labels_convention)

        hints = typing.get_type_hints(PreprocessParams)
        docs = _field_docs(PreprocessParams)
        step_of = {n: s for s, names in STEP_PARAMS.items() for n in names}
        self.param_widgets: dict[str, Any] = {}
        main: list[Any] = []
        advanced: list[Any] = []
        last_step = None
        for f in dataclasses.fields(PreprocessParams):
            w = _make_field(f, hints.get(f.name), docs.get(f.name, ""))
            self.param_widgets[f.name] = w
            w.changed.connect(self._on_param_changed)
            if f.name in _ADVANCED:
                advanced.append(w)
                continue
            step = step_of.get(f.name)
            if step != last_step and step is not None:
                main.append(Label(value=f"<b>{_STEP_TITLES.get(step, step)}</b>"))
                last_step = step
            main.append(w)
        self.add_form(*main)
        from superqt import QCollapsible

        self._advanced = QCollapsible("advanced parameters")
        from magicgui.widgets import Container

        self._advanced_box = Container(widgets=advanced, labels=True)
        self._advanced.addWidget(self._advanced_box.native)
        self.add(self._advanced)

        self.auto_rerun = CheckBox(value=True, label="re-run on change")
        self.auto_rerun.tooltip = (
            "After a first run, changing a parameter re-runs the pipeline from the first "
            "step that uses it."
        )
        self.add_form(self.auto_rerun, labels=False)
        self.run_button = PushButton(text="Run")
        self.defaults_button = PushButton(text="Defaults")
        self.view_button = PushButton(text="Show volume")
        self.run_button.changed.connect(lambda *_: self.run())
        self.defaults_button.changed.connect(lambda *_: self.set_params(PreprocessParams()))
        self.view_button.changed.connect(lambda *_: self._toggle_view())
        self.add_buttons(self.run_button, self.defaults_button, self.view_button)
        self.add_status()

        self._listen(viewer.dims.events.ndisplay, self._on_ndisplay)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.run)
        self.refresh_choices()

    # -- parameters --------------------------------------------------------------------
    def params(self) -> PreprocessParams:
        """The parameters in the fields (raises ValueError for an invalid combination)."""
        values = {name: w.value for name, w in self.param_widgets.items()}
        return PreprocessParams(**values)

    def set_params(self, params: PreprocessParams, run: bool = False) -> None:
        """Fill the fields from ``params`` (one re-run at most, when ``run``)."""
        self._timer.stop()
        for name, w in self.param_widgets.items():
            with w.changed.blocked():
                w.value = getattr(params, name)
        if run:
            self.run()
        else:
            self._on_param_changed()

    def _on_param_changed(self, *_: Any) -> None:
        if self.result is None or not self.auto_rerun.value:
            return
        self._timer.start(self.debounce_ms)

    # -- inputs ------------------------------------------------------------------------
    def _cached(self, key: str, signature: tuple, build: Any) -> Volume:
        hit = self._volume_cache.get(key)
        if hit is not None and hit[0] == signature:
            return hit[1]
        vol = build()
        self._volume_cache[key] = (signature, vol)
        return vol

    def _inputs(self) -> tuple[Any, Volume, Volume | None]:
        layer = self.ct_layer.value
        if layer is None:
            raise ValueError("no CT image layer: open a CT (File > Open) or the sample")
        if layer.ndim != 3 or np.asarray(layer.data).ndim != 3:
            raise ValueError(
                f"layer {layer.name!r} is {layer.ndim}D; choose a 3D CT volume (not a MIP)"
            )
        geo = (layer.metadata or {}).get("volume_geometry")
        sig = (id(layer), id(layer.data), repr(geo), tuple(layer.scale), tuple(layer.translate))
        ct = self._cached("ct", sig, lambda: volume_from_layer(layer))
        labels = None
        lab_layer = self.labels_layer.value
        if lab_layer is not None:
            conv = self.labels_convention.value
            lsig = (id(lab_layer), id(lab_layer.data), conv, id(ct))
            labels = self._cached("labels", lsig, lambda: self._labels_volume(lab_layer, ct))
        return layer, ct, labels

    def _labels_volume(self, layer: Any, ct: Volume) -> Volume:
        arr = np.asarray(layer.data)
        if arr.shape != ct.shape:
            raise ValueError(
                f"labels {layer.name!r} have shape {arr.shape}, the CT {ct.shape}; "
                "choose the label map of this CT (or none)"
            )
        conv = self.labels_convention.value
        if conv == "auto":
            conv = (layer.metadata or {}).get("convention") or guess_convention(arr)
        if conv in ("class ids", "class_ids"):
            classes = np.where((arr >= 0) & (arr < NUM_CLASSES), arr, 0).astype(np.uint8)
        else:
            classes = to_class_map(arr, conv)
        return ct.with_array(classes)

    # -- running -----------------------------------------------------------------------
    def run(self) -> bool:
        """Run (or re-run) the pipeline on a worker thread; False if it cannot start."""
        self._timer.stop()
        if self.runner.busy:
            self._pending = True
            return False
        try:
            layer, ct, labels = self._inputs()
            params = self.params()
        except ValueError as e:
            self.fail(f"Preprocess: {error_message(e)}")
            return False
        from napari_vertebra.core import run_pipeline

        prev = self.result
        same_input = prev is not None and prev.source is ct and prev.labels_source is labels
        self._planned = steps_to_rerun(prev.params if prev else None, params, same_input)
        if prev is not None and prev.source is not ct:
            prev = None
        self._ct_name = layer.name
        self._ct_layer_ref = layer
        work = partial(run_pipeline, ct, params, labels=labels, previous=prev)
        return self.runner.start(
            work, on_done=self._on_result, description=f"Preprocessing {layer.name}"
        )

    def _on_result(self, result: PipelineResult) -> None:
        self.last_rerun = list(self._planned)
        self.show_result(result)
        reused = [s for s in STEPS if s not in self.last_rerun]
        msg = f"done in {self.runner.elapsed():.1f} s; ran: {', '.join(self.last_rerun) or '-'}"
        if reused:
            msg += f"; re-used: {', '.join(reused)}"
        found = 100 * result.found_fraction
        msg += f". Canal found on {found:.0f}% of slices, MIP {result.mip.shape[0]}x"
        msg += f"{result.mip.shape[1]} px"
        level = "ok" if found >= 20 else "warning"
        if result.warnings:
            level = "warning"
            msg += ". Warning: " + " ".join(result.warnings)
            self._notify_warnings(result)
        self.status.set(msg, level)
        if self._pending:
            self._pending = False
            self.run()

    def _notify_warnings(self, result: PipelineResult) -> None:
        """Show the result's warnings as napari notifications (once per input and list)."""
        from napari.utils.notifications import show_warning

        key = (id(result.source), result.warnings)
        if key == self._warned:
            return  # a re-run that changed nothing the user was not told already
        self._warned = key
        for w in result.warnings:
            show_warning(f"Preprocess {self._ct_name}: {w}")

    def show_result(self, result: PipelineResult, ct_layer: Any = None) -> dict[str, Any]:
        """Show ``result`` as layers (updated in place) and keep it as ``self.result``.

        ``ct_layer`` names the layers (default: the layer of the last run, else the CT
        picker). Returns {role: layer}.
        """
        if ct_layer is not None:
            self._ct_layer_ref = ct_layer
        elif getattr(self, "_ct_layer_ref", None) is None:
            self._ct_layer_ref = self.ct_layer.value
        if self._ct_layer_ref is not None:
            self._ct_name = self._ct_layer_ref.name
        self._ct_name = self._ct_name or "CT"
        self.result = result
        self.n_runs += 1
        self._show_layers(result)
        return self.result_layers

    # -- layers ------------------------------------------------------------------------
    def layer_names(self, ct_name: str | None = None) -> dict[str, str]:
        """{role: layer name} of the result layers of CT ``ct_name``."""
        n = ct_name or self._ct_name
        return {
            "windowed": f"windowed {n}",
            "canal": f"canal centres {n}",
            "box": f"crop box {n}",
            "mip": f"MIP {n}",
            "mip_labels": f"MIP labels {n}",
        }

    def _show_layers(self, r: PipelineResult) -> None:
        names = self.layer_names()
        v = self.viewer
        p = r.params
        grid = r.resampled.napari_kwargs()
        layers: dict[str, Any] = {}
        layers["windowed"], _ = upsert_layer(
            v,
            names["windowed"],
            r.windowed.array,
            "Image",
            **layer_kwargs(
                r.windowed,
                colormap="gray",
                contrast_limits=(0.0, float(p.hu_max)),
                metadata={"source_layer": self._ct_name},
            ),
        )
        found = np.asarray(r.canal_found, bool)
        colours = np.where(found[:, None], _rgba(FOUND_COLOUR), _rgba(CARRIED_COLOUR))
        layers["canal"], _ = upsert_layer(
            v,
            names["canal"],
            np.asarray(r.canal_centres, float),
            "Points",
            features={"found": found},
            face_color=colours,
            border_color=colours,
            size=max(3.0, 6.0 / p.spacing_mm),
            **grid,
        )
        # keep the colours right on re-run (setting data may recycle the old colours)
        layers["canal"].face_color = colours
        layers["canal"].border_color = colours
        shapes, kinds = self._box_shapes(r.crop_box)
        layers["box"], added = upsert_layer(
            v,
            names["box"],
            shapes,
            "Shapes",
            shape_type=kinds,
            edge_color=BOX_COLOUR,
            face_color="transparent",
            edge_width=1.5,
            **grid,
        )
        layers["box"].metadata["crop_box"] = [list(map(int, b)) for b in r.crop_box]
        if not added:
            layers["box"].edge_color = BOX_COLOUR
            layers["box"].face_color = "transparent"
        mip_meta = {
            "mip_of": self._ct_name,
            "source_path": (getattr(self._ct_layer_ref, "metadata", None) or {}).get(
                "source_path", ""
            ),
            "crop_box": [list(map(int, b)) for b in r.crop_box],
            "params": r.params.to_dict(),
            "resampled_geometry": geometry_metadata(r.resampled)["volume_geometry"],
            "preprocess_result": True,
        }
        layers["mip"], _ = upsert_layer(
            v,
            names["mip"],
            r.mip,
            "Image",
            colormap="gray",
            contrast_limits=(0.0, float(p.hu_max)),
            metadata=mip_meta,
        )
        try:
            _RESULTS[unwrap(layers["mip"])] = r
        except TypeError:
            pass
        lab = mip_labels(r)
        if lab is not None:
            layers["mip_labels"], _ = upsert_layer(
                v,
                names["mip_labels"],
                lab,
                "Labels",
                colormap=class_label_colormap(),
                features=class_label_features(),
                opacity=0.45,
                metadata={"mip_of": self._ct_name},
            )
        self.result_layers = layers
        self.show_mip()

    def _box_shapes(self, box: Any) -> tuple[list[np.ndarray], list[str]]:
        """The crop box as napari shows it: per-slice rectangles in 2D, edges in 3D."""
        if self.viewer.dims.ndisplay == 3:
            return [box_edges_path(box)], ["path"]
        rects = box_rectangles(box)
        return rects, ["rectangle"] * len(rects)

    def _on_ndisplay(self, *_: Any) -> None:
        layer = self.result_layers.get("box")
        if self.result is None or layer is None or layer not in self.viewer.layers:
            return
        shapes, kinds = self._box_shapes(self.result.crop_box)
        upsert_layer(self.viewer, layer.name, shapes, "Shapes", shape_type=kinds)
        layer.edge_color = BOX_COLOUR
        layer.face_color = "transparent"

    def _volume_layers(self) -> list[Any]:
        out = [self._ct_layer_ref] if self._ct_layer_ref is not None else []
        if self.labels_layer.value is not None:
            out.append(self.labels_layer.value)
        out += [self.result_layers.get(k) for k in ("windowed", "canal", "box")]
        return [x for x in out if x is not None and x in self.viewer.layers]

    def _mip_layers(self) -> list[Any]:
        out = [self.result_layers.get(k) for k in ("mip", "mip_labels")]
        return [x for x in out if x is not None and x in self.viewer.layers]

    def show_mip(self) -> None:
        """Hide the 3D layers, show the MIP (2D view, fitted)."""
        for layer in self._volume_layers():
            layer.visible = False
        for layer in self._mip_layers():
            layer.visible = True
        mip = self.result_layers.get("mip")
        if mip is not None and mip in self.viewer.layers:
            self.viewer.dims.ndisplay = 2
            self.viewer.layers.selection.active = mip
            fit_to_layer(self.viewer, mip)
        self.view_button.text = "Show volume"

    def show_volume(self) -> None:
        """Show the CT and the 3D steps (windowed volume, canal, box), hide the MIP."""
        for layer in self._mip_layers():
            layer.visible = False
        vols = self._volume_layers()
        labels = self.labels_layer.value
        for layer in vols:
            # the windowed volume replaces the CT (and covers the labels) on screen
            is_ct = same_layer(layer, self._ct_layer_ref)
            layer.visible = (not is_ct or len(vols) == 1) and not same_layer(layer, labels)
        box = self.result_layers.get("box")
        if box is not None and box in self.viewer.layers:
            fit_to_layer(self.viewer, box, margin=0.25)
        elif vols:
            fit_to_layer(self.viewer, vols[0])
        self.view_button.text = "Show MIP"

    def _toggle_view(self) -> None:
        if self.view_button.text == "Show volume":
            self.show_volume()
        else:
            self.show_mip()

    def mip_layer(self) -> Any:
        """The MIP layer of the last run (or None)."""
        layer = self.result_layers.get("mip")
        if layer is None or layer not in self.viewer.layers:
            return find_layer(self.viewer, self.layer_names()["mip"], "Image")
        return layer


def fit_to_layer(viewer: Any, layer: Any, margin: float = 0.05) -> None:
    """Centre the 2D camera on ``layer`` and zoom so that it fills the canvas.

    (napari's ``fit_to_view(layers=...)`` fails for a 2D layer among 3D ones.)
    """
    try:
        extent = np.asarray(layer.extent.world, float)  # (2, ndim) min / max
        lo, hi = extent[0][-2:], extent[1][-2:]
        size = np.maximum(hi - lo, 1e-6)
        scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
        cam = scene.camera if scene is not None else viewer.camera
        centre = tuple(float(c) for c in (lo + hi) / 2)
        cam.center = (*tuple(cam.center)[:-2], *centre)
        canvas = getattr(getattr(viewer, "canvas", None), "size", None) or (600, 600)
        cam.zoom = (1 - margin) * float(np.min(np.asarray(canvas, float) / size))
    except Exception:  # a view nicety must never break showing a result
        pass


def _rgba(hex_colour: str) -> np.ndarray:
    h = hex_colour.lstrip("#")
    return np.array([int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)] + [1.0])
