"""The "Predict vertebrae" widget: a checkpoint on a MIP (or a CT) -> Labels + boxes.

Pick a checkpoint and an Image layer: a 2D MIP (e.g. "MIP <ct>" of 'Preprocess CT') or a
3D CT, which is preprocessed first (:func:`napari_vertebra.core.run_pipeline`). The
model runs on a worker thread (:mod:`napari_vertebra.model.predict_jobs`, through the model's
``Predictor``); the raw detections are kept, so the score slider re-filters them (score
threshold, duplicate suppression, anatomical order: the model's ``postprocess``) without
predicting again. Output layers: "predicted vertebrae <image>" (Labels, one colour per
class T1..L5) and "predicted boxes <image>" (Shapes rectangles with "L1 0.97" text).
"Show in 3D" carries the MIP labels back into the CT: a first estimate, not 3D labels.

The widget talks to the viewer's :class:`~._session.Session` only: it takes the
checkpoint from it (``checkpoint_changed``, e.g. from 'Train model'), the pipeline
result behind a MIP and the preprocessing parameters, and publishes the prediction it
shows (``prediction_changed``, followed by 'Review predictions').
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, FloatSlider, Label, PushButton

from napari_vertebra.core.labels import class_colour, class_name
from napari_vertebra.model.predict_jobs import (
    RawPrediction,
    back_to_3d_job,
    boxes_to_rectangles,
    mip_spacing,
    predict_job,
)
from napari_vertebra.model.starter import starter_checkpoint

from ._base import VertebraWidget, layer_combo
from ._layers import class_label_colormap, class_label_features, find_layer, layer_kwargs
from ._session import ShownPrediction

if TYPE_CHECKING:  # napari passes the viewer to a parameter annotated like this
    import napari.viewer

__all__ = ["BACK3D_TIP", "PredictWidget"]

BACK3D_TIP = (
    "Carry the predicted MIP labels back into the CT: each labelled MIP pixel labels the\n"
    "run of bone voxels along its ray that holds the brightest voxel. A first estimate of\n"
    "where each vertebra lies in 3D (about 0.6-0.7 Dice per vertebra on the lumbar\n"
    "sample), not a 3D segmentation."
)


# ------------------------------------------------------------------ the widget
class PredictWidget(VertebraWidget):
    """Predict vertebrae with a checkpoint on a MIP (or a CT, preprocessed first).

    Attributes: ``checkpoint`` (FileEdit), ``image_layer`` (Image layers: 2D MIP or 3D
    CT), ``device``, ``min_score`` (slider, 0..1), ``predict_button``,
    ``show3d_button``; results: ``raw`` (:class:`RawPrediction`, kept so the slider
    re-filters), ``prediction`` (the Prediction shown), ``labels_layer``,
    ``boxes_layer``, ``volume_layer``. Handlers: :meth:`set_checkpoint`, :meth:`run`,
    :meth:`apply_score`, :meth:`show_in_3d`.
    """

    def __init__(
        self, viewer: napari.viewer.Viewer, parent: Any = None, checkpoint: str | None = None
    ) -> None:
        super().__init__(viewer, parent)
        self.raw: RawPrediction | None = None
        self.prediction: Any = None
        self.labels_layer: Any = None
        self.boxes_layer: Any = None
        self.volume_layer: Any = None
        self._predictor: Any = None
        self._predictor_key: tuple | None = None
        self._displaying = False

        self.checkpoint = FileEdit(
            label="checkpoint", mode="r", filter="*.pt *.pth", nullable=True
        )
        self.checkpoint.tooltip = (
            "A napari-vertebra checkpoint (RUN/best.pt or RUN/last.pt); preselected: the\n"
            "starter model that ships with the plugin (trained on four real scans, not for\n"
            "clinical use: docs/starter_model.md)"
        )
        self.image_layer = layer_combo(viewer, "Image", "image")
        self.image_layer.tooltip = (
            "A 2D sagittal MIP (e.g. 'MIP <ct>' of Preprocess CT) or a 3D CT, which is\n"
            "preprocessed first (default parameters)"
        )
        self.device = ComboBox(label="device", choices=["cpu", "cuda"], value="cpu")
        self.min_score = FloatSlider(
            label="min class prob.", min=0.0, max=1.0, step=0.01, value=0.9
        )
        self.min_score.tooltip = (
            "Show detections whose class probability (the probability of the vertebra\n"
            "level the detector gives it) is at least this (the paper: 0.9). The 'is a\n"
            "vertebra' probability 1 - p(background) is not used: an untrained model has\n"
            "it near 0.94 everywhere. Changing it re-filters the kept detections (the\n"
            "model's best box_detections_per_img); it does not predict again."
        )
        self.add_form(self.checkpoint, self.image_layer, self.device, self.min_score)
        self.predict_button = PushButton(text="Predict")
        self.show3d_button = PushButton(text="Show in 3D")
        self.show3d_button.tooltip = BACK3D_TIP
        self.add_buttons(self.predict_button, self.show3d_button)
        self.summary = Label(value="")
        self.summary.native.setWordWrap(True)
        self.add(self.summary)
        self.add_status()

        self.predict_button.changed.connect(lambda *_: self.run())
        self.show3d_button.changed.connect(lambda *_: self.show_in_3d())
        #: whether the user set the slider since the checkpoint was chosen (a new
        #: model's first prediction then keeps it, else the slider takes the model's own)
        self._score_set = False
        self.min_score.changed.connect(lambda *_: self._on_score_changed())
        self.checkpoint.changed.connect(lambda *_: setattr(self, "_score_set", False))
        self._listen(self.session.checkpoint_changed, self._on_session_checkpoint)
        self.refresh_choices()
        self._update_buttons()
        checkpoint = checkpoint or self.session.checkpoint or starter_checkpoint()
        if checkpoint:
            self.set_checkpoint(checkpoint)

    # ----------------------------------------------------------------- inputs
    def set_checkpoint(self, path: str | os.PathLike) -> None:
        """Use the checkpoint at ``path`` for the next prediction."""
        p = Path(path).expanduser()
        if not p.is_file():
            self.fail(f"Predict: checkpoint {p} not found")
            return
        self.checkpoint.value = str(p.resolve())
        self.status.set(f"checkpoint: {p.name}", "info")

    def set_image_layer(self, layer: Any) -> None:
        """Predict on ``layer`` (an Image layer of the viewer) next."""
        self.refresh_choices()
        self.image_layer.value = layer

    def _on_session_checkpoint(self, path: str) -> None:
        if path and str(self.checkpoint.value or "") != path:
            self.set_checkpoint(path)

    # ----------------------------------------------------------------- predicting
    def run(self) -> bool:
        """Predict on the chosen image layer (worker thread); False if it cannot start."""
        if self.runner.busy:
            self.status.set("a prediction is running", "warning")
            return False
        ckpt = self.checkpoint.value
        if not ckpt:
            self.fail("Predict: choose a checkpoint file (e.g. RUN/best.pt)")
            return False
        ckpt = str(Path(ckpt).expanduser())
        if not Path(ckpt).is_file():
            self.fail(f"Predict: checkpoint {ckpt} not found")
            return False
        self.refresh_choices()
        layer = self.image_layer.value
        if layer is None:
            self.fail("Predict: no image layer (open a CT or run Preprocess CT)")
            return False
        data = np.asarray(layer.data)
        ct = result = params = spacing = None
        if data.ndim == 3 and not getattr(layer, "rgb", False):
            from ._layers import volume_from_layer

            try:
                ct = volume_from_layer(layer)
            except ValueError as e:
                self.fail(f"Predict: {e}")
                return False
            params = self.session.preprocess_params  # None: the defaults
        elif data.ndim == 2:
            result = self.session.result_for(layer)
            try:
                spacing = mip_spacing(result, layer.metadata)
            except ValueError as e:
                self.fail(f"Predict: layer {layer.name!r}: {e}")
                return False
        else:
            self.fail(
                f"Predict: layer {layer.name!r} has shape {data.shape}; choose a 2D MIP or a 3D CT"
            )
            return False
        device = self.device.value
        key = (ckpt, os.path.getmtime(ckpt), device)
        predictor = self._predictor if key == self._predictor_key else None
        self._pending_key = key
        self._source_layer = layer
        job = partial(
            predict_job, predictor, ckpt, device, data if ct is None else None, layer.name,
            ct=ct, result=result, params=params, min_score=self.min_score.value,
            spacing=spacing,
        )  # fmt: skip
        return self.runner.start(
            job, on_done=self._on_predicted, description=f"Predicting on {layer.name}"
        )

    def _on_predicted(self, out: tuple[Any, RawPrediction]) -> None:
        predictor, raw = out
        if self._pending_key != self._predictor_key and not self._score_set:
            with self.min_score.changed.blocked():  # another model: its own threshold
                self.min_score.value = raw.default_min_score
        self._predictor, self._predictor_key = predictor, self._pending_key
        self.session.predictor = predictor  # Annotate's click outlines use it
        self.raw = raw
        self._update_buttons()
        if raw.result is not None and np.asarray(self._source_layer.data).ndim == 3:
            # one new layer per event-loop turn: the viewer stays responsive
            self._displaying = True
            self._show_mip(raw)
            self.later(lambda: self.apply_score(defer=True))
        else:
            self.apply_score(defer=True)

    def _show_mip(self, raw: RawPrediction) -> None:
        """Add (or update) the MIP of a CT that was preprocessed here."""
        from ._layers import upsert_layer

        name = f"MIP {raw.image_name}"
        layer, _ = upsert_layer(
            self.viewer, name, raw.mip, "Image", colormap="gray",
            contrast_limits=(0.0, float(raw.result.params.hu_max)),
            metadata={"mip_of": raw.image_name, "pipeline_result": raw.result},
        )  # fmt: skip
        self.viewer.dims.ndisplay = 2
        self._mip_layer = layer

    def _target_layer(self) -> Any:
        """The 2D layer the predictions lie on (the MIP)."""
        layer = getattr(self, "_mip_layer", None)
        src = getattr(self, "_source_layer", None)
        if src is not None and np.asarray(src.data).ndim == 2:
            return src
        return layer

    @property
    def busy(self) -> bool:
        """True while predicting, carrying back to 3D or adding the result layers."""
        return self.runner.busy or self._displaying

    def _on_score_changed(self) -> None:
        self._score_set = True
        self.apply_score()

    def apply_score(self, defer: bool = False) -> None:
        """Show the kept detections at the slider's score (no new prediction).

        With ``defer`` the boxes layer is updated in a later event-loop turn (adding
        napari layers is slow; one at a time keeps the viewer responsive).
        """
        if self.raw is None:
            return
        pred = self.raw.at(self.min_score.value)
        self.prediction = pred
        self._show_labels(pred)
        if not defer:
            self._show_boxes(pred)
            self._finish(pred)
            return
        self._displaying = True

        def show_rest() -> None:
            try:
                if self.prediction is pred:
                    self._show_boxes(pred)
                    self._finish(pred)
            finally:
                self._displaying = False

        self.later(show_rest)

    def _finish(self, pred: Any) -> None:
        n_raw = self.raw.n_raw
        names = ", ".join(f"{n} {s:.2f}" for n, s in zip(pred.names, pred.scores, strict=True))
        levels = getattr(pred, "level_summary", "") if len(pred) else ""
        self.summary.value = (
            f"{len(pred)} vertebra(e) at score ≥ {self.min_score.value:.2f} "
            f"({n_raw} detections kept): {names or '-'}"
            + (f"\nLevels: {levels}" if levels else "")
        )
        guessed = self.raw.spacing is None and getattr(self._predictor, "tile_rows", None)
        note = "; the MIP records no pixel spacing: read as 1 mm per pixel" if guessed else ""
        ok = len(pred) and not note
        self.status.set(f"{len(pred)} vertebra(e) shown{note}", "ok" if ok else "warning")
        self.session.set_prediction(
            ShownPrediction(
                pred, self.raw.image_name, self._target_layer(), self.labels_layer,
                self.boxes_layer,
            )
        )  # fmt: skip

    def _placement(self) -> dict:
        base = self._target_layer()
        if base is None:
            return {}
        return {"scale": tuple(base.scale[-2:]), "translate": tuple(base.translate[-2:])}

    def _show_labels(self, pred: Any) -> None:
        from ._layers import upsert_layer

        name = self.raw.image_name.removeprefix("MIP ")
        label_image = pred.label_image() if len(pred) else np.zeros(pred.shape, np.uint8)
        meta = {"prediction_of": self.raw.image_name, "checkpoint": self.raw.checkpoint}
        self.labels_layer, _ = upsert_layer(
            self.viewer, f"predicted vertebrae {name}", label_image, "Labels",
            colormap=class_label_colormap(), features=class_label_features(), opacity=0.5,
            metadata=meta, **self._placement(),
        )  # fmt: skip

    def _show_boxes(self, pred: Any) -> None:
        name = self.raw.image_name.removeprefix("MIP ")
        rects = boxes_to_rectangles(pred.boxes)
        text = [f"{n} {s:.2f}" for n, s in zip(pred.names, pred.scores, strict=True)]
        colours = [class_colour(int(c)) for c in pred.classes]
        self.boxes_layer = self._update_boxes(
            f"predicted boxes {name}", rects, text, colours, self._placement()
        )

    def _update_boxes(
        self, name: str, rects: list, text: list[str], colours: list[str], place: dict
    ) -> Any:
        text_style = {
            "string": "{label}",
            "color": "white",
            "size": 9,
            "anchor": "upper_left",
            "translation": [-1.5, 0.0],
        }
        layer = find_layer(self.viewer, name, "Shapes")
        features = {"label": np.asarray(text, dtype=object)}
        if layer is not None:
            layer.selected_data = set()
            layer.data = []
            if rects:
                layer.add_rectangles(rects, edge_color=colours, face_color="transparent")
            layer.features = features
            layer.text = text_style
            for k, v in place.items():
                setattr(layer, k, v)
            layer.refresh()
            return layer
        return self.viewer.add_shapes(
            rects, shape_type="rectangle", name=name, edge_color=colours or "white",
            face_color="transparent", edge_width=1.0, features=features, text=text_style,
            **place,
        )  # fmt: skip

    # ----------------------------------------------------------------- back to 3D
    def show_in_3d(self) -> bool:
        """Add "predicted vertebrae 3D <ct>": the shown MIP labels carried back into the CT's
        resampled grid on a worker thread (a first estimate, see the button's tooltip).
        Returns False when it cannot start; the layer is ``volume_layer`` once done."""
        if self.prediction is None or self.raw is None:
            self.fail("Show in 3D: predict first")
            return False
        result = self.raw.result
        if result is None:
            self.fail(
                "Show in 3D needs the CT behind the MIP: predict on the CT layer, or on the MIP "
                "that 'Preprocess CT' made in this session"
            )
            return False
        label_image = self.prediction.label_image()
        name = self.raw.image_name.removeprefix("MIP ")
        return self.runner.start(
            partial(back_to_3d_job, label_image, result),
            on_done=lambda out: self._show_volume(out[0], out[1], result, name),
            description="Carrying the vertebrae back to 3D",
        )

    def _show_volume(self, vol: np.ndarray, present: list[int], result: Any, name: str) -> None:
        from ._layers import upsert_layer

        self.volume_layer, _ = upsert_layer(
            self.viewer,
            f"predicted vertebrae 3D {name}",
            vol,
            "Labels",
            **layer_kwargs(
                result.resampled.with_array(vol),
                colormap=class_label_colormap(),
                features=class_label_features(),
                opacity=0.6,
                metadata={"estimate_from_mip": True},
            ),
        )
        names = [class_name(c) for c in present]
        self.status.set(
            f"3D estimate of {', '.join(names) or 'no vertebra'} on the "
            f"{result.params.spacing_mm:g} mm grid (a first estimate, not a 3D segmentation)",
            "ok",
        )

    def _update_buttons(self) -> None:
        self.predict_button.enabled = True
