"""The "Preprocess CT" dock widget: run the pipeline and show every step as a layer.

CT Image layer (+ optional Labels layer carried through) -> :func:`run_pipeline` on a
worker thread -> layers "windowed <ct>" (1 mm), "canal centres <ct>" (Points: found in
cyan, interpolated in magenta), "crop box <ct>" (Shapes path along the box edges),
"MIP <ct>" (2D, head up, anterior left) and, with labels, "MIP labels <ct>". Changing a
parameter re-runs only the steps from the first one that uses it (``previous=``); the
layers are updated in place. The MIP's pipeline result and the parameters go into the
viewer's :class:`~._session.Session` (for Annotate's "Labels from 3D" and Predict).
"""

from __future__ import annotations

import dataclasses
import typing
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label
from qtpy.QtCore import QTimer
from superqt import QCollapsible

from napari_vertebra.core import STEP_PARAMS, STEPS, PipelineResult, PreprocessParams
from napari_vertebra.core.labels import (
    LABEL_CONVENTIONS,
    NUM_CLASSES,
    resolve_convention,
    to_class_map,
)
from napari_vertebra.core.pipeline import steps_to_rerun
from napari_vertebra.core.volume import Volume

from ._base import VertebraWidget, layer_combo
from ._layers import volume_from_layer
from ._preprocess_form import ADVANCED, STEP_TITLES, field_docs, make_field
from ._preprocess_layers import PreprocessLayers
from ._status import error_message

if TYPE_CHECKING:  # napari passes the viewer to a parameter annotated like this
    import napari.viewer

__all__ = ["PreprocessWidget"]


class PreprocessWidget(PreprocessLayers, VertebraWidget):
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
        self._add_inputs()
        self._add_param_fields()
        self._add_controls()
        self._listen(viewer.dims.events.ndisplay, self._on_ndisplay)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.run)
        self._publish_params()
        self.refresh_choices()

    # -- building ----------------------------------------------------------------------
    def _add_inputs(self) -> None:
        """The CT and labels pickers and the labels' convention."""
        self.ct_layer = layer_combo(self.viewer, "Image", "CT image")
        self.labels_layer = layer_combo(self.viewer, "Labels", "labels (optional)", nullable=True)
        self.labels_convention = ComboBox(
            value="auto", choices=list(LABEL_CONVENTIONS), label="label ids"
        )
        self.labels_convention.tooltip = (
            "How the label map numbers vertebrae: class ids 1..17 (T1..L5), "
            "TotalSegmentator v2 or VerSe; 'auto' guesses from the values."
        )
        self.add_form(self.ct_layer, self.labels_layer, self.labels_convention)

    def _add_param_fields(self) -> None:
        """One field per :class:`PreprocessParams` field, under its step's title; the
        advanced ones in a collapsed box."""
        hints = typing.get_type_hints(PreprocessParams)
        docs = field_docs(PreprocessParams)
        step_of = {n: s for s, names in STEP_PARAMS.items() for n in names}
        self.param_widgets: dict[str, Any] = {}
        main: list[Any] = []
        advanced: list[Any] = []
        last_step = None
        for f in dataclasses.fields(PreprocessParams):
            w = make_field(f, hints.get(f.name), docs.get(f.name, ""))
            self.param_widgets[f.name] = w
            w.changed.connect(self._on_param_changed)
            if f.name in ADVANCED:
                advanced.append(w)
                continue
            step = step_of.get(f.name)
            if step != last_step and step is not None:
                main.append(Label(value=f"<b>{STEP_TITLES.get(step, step)}</b>"))
                last_step = step
            main.append(w)
        self.add_form(*main)
        self._advanced = QCollapsible("advanced parameters")
        self._advanced_box = Container(widgets=advanced, labels=True)
        self._advanced.addWidget(self._advanced_box.native)
        self.add(self._advanced)

    def _add_controls(self) -> None:
        """Re-run on change, Run / Defaults / Show volume, the progress and status."""
        self.auto_rerun = CheckBox(value=True, label="re-run on change")
        self.auto_rerun.tooltip = (
            "After a first run, changing a parameter re-runs the pipeline from the first "
            "step that uses it."
        )
        self.add_form(self.auto_rerun, labels=False)
        self.run_button = self.button("Run", self.run)
        self.defaults_button = self.button("Defaults", lambda: self.set_params(PreprocessParams()))
        self.view_button = self.button("Show volume", self._toggle_view)
        self.add_buttons(self.run_button, self.defaults_button, self.view_button)
        self.add_status()

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
        self._publish_params()
        if run:
            self.run()
        else:
            self._on_param_changed()

    def _on_param_changed(self, *_: Any) -> None:
        self._publish_params()
        if self.result is None or not self.auto_rerun.value:
            return
        self._timer.start(self.debounce_ms)

    def _publish_params(self) -> None:
        """The fields' parameters (when valid) become the session's, for Predict on a CT."""
        try:
            self.session.preprocess_params = self.params()
        except (ValueError, TypeError):  # invalid: Predict uses the defaults, as before
            self.session.preprocess_params = None

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
        hint = (layer.metadata or {}).get("convention")
        conv = resolve_convention(self.labels_convention.value, arr, hint)
        if conv == "class ids":
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
