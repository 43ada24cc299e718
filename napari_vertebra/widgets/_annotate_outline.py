"""Click outlines on the vertebra Shapes layer (key O; a mixin of
:class:`~.annotate.AnnotateWidget`): a click inside a vertebra adds its outline, from the
model that 'Predict vertebrae' loaded when there is one, else from image analysis of the
MIP (see :mod:`._outline_tool`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vertebra.core.labels import class_name

from ._shapes import typed

__all__ = ["AnnotateOutline"]


class AnnotateOutline:
    """Outline mode of the Annotate widget.

    Uses the widget's ``viewer``, ``session``, ``shapes``, ``mip_layer``, ``status``,
    ``current_class``, ``_suspended``, ``_next_instance``, ``_n_shapes``, ``_restyle``,
    ``_advance``, ``_update_defaults`` and ``_after_change``.
    """

    # -- click outlines (O) ------------------------------------------------------------------
    def _install_outline(self, layer: Any) -> None:
        """Outline mode (O) on ``layer``: a click inside a vertebra adds its outline."""
        from ._outline_tool import OutlineTool

        self._uninstall_outline()
        self.outline_tool = OutlineTool(
            self.viewer,
            layer,
            self.add_outline,
            get_image=self._outline_image,
            get_outliner=self._model_outliner,
            status=self.status,
            get_spacing=self._outline_spacing,
        ).install()

    def _uninstall_outline(self) -> None:
        tool = getattr(self, "outline_tool", None)
        if tool is not None:
            tool.uninstall()
            self.outline_tool = None

    def _outline_image(self) -> Any:
        mip = self.mip_layer.value
        return None if mip is None else np.asarray(mip.data)

    def _outline_spacing(self) -> Any:
        """[row, col] mm per pixel of the MIP (None: unknown, read as 1 mm); a recorded
        spacing that cannot be one is said in the status line and read as 1 mm."""
        from napari_vertebra.model.predict_jobs import mip_spacing

        mip = self.mip_layer.value
        if mip is None:
            return None
        try:
            return mip_spacing(self.session.result_for(mip), mip.metadata)
        except ValueError as e:
            self.status.set(f"Outline: {e}; read as 1 mm per pixel", "warning")
            return None

    def _model_outliner(self) -> Any:
        """A ModelOutliner of the Predictor that 'Predict vertebrae' loaded, or None."""
        predictor = self.session.predictor
        if predictor is None:
            return None
        if getattr(self, "_outliner_of", None) is not predictor:
            from napari_vertebra.model.outline import ModelOutliner

            self._outliner, self._outliner_of = ModelOutliner(predictor), predictor
        return self._outliner

    def add_outline(self, polygon: Any, source: str = "outline", score: Any = None) -> None:
        """Add a clicked outline as a polygon of the picker's class, with its ``source``
        ("outline": image analysis, "model") and ``score``; one undoable step."""
        layer = self.shapes
        if layer is None:
            return
        cid, name = self.current_class, class_name(self.current_class)
        with self._suspended():
            layer.add([np.asarray(polygon, float)], shape_type="polygon")
            feats = layer.features.copy().reset_index(drop=True)
            i = len(layer.data) - 1
            feats.loc[i, "class_id"] = cid
            feats.loc[i, "vertebra"] = name
            feats.loc[i, "instance"] = self._next_instance
            feats.loc[i, "score"] = np.nan if score is None else float(score)
            feats.loc[i, "source"] = source
            layer.features = typed(feats.iloc[: len(layer.data)])
        self._next_instance += 1
        self._n_shapes = len(layer.data)
        self._restyle()
        self._advance(present=[int(c) for c in layer.features["class_id"]])
        self._update_defaults()
        self._after_change(label=f"outline {name}")
