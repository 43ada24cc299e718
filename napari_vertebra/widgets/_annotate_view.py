"""Which MIP shows in 'Annotate vertebrae' (a mixin of :class:`~.annotate.AnnotateWidget`).

The polygons stay above the layers added later. Every MIP sits at the origin of the 2D
view, so the polygons of one would lie over another: choosing a MIP hides the one before
with its layers (polygons, labels, mask, a prediction on it), shows the chosen one with
its polygons and fits the view to it. An image that does not look like a sagittal MIP of
a CT (:func:`~napari_vertebra.annotation.mip_check.mip_problems`) gets a warning, once.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from napari_vertebra.annotation.mip_check import mip_problems

from ._layers import same_layer, unwrap
from ._status import notify
from ._view import fit_to_layer

__all__ = ["AnnotateView"]


class AnnotateView:
    """Mixin: show only the chosen MIP and its polygons (on top); check that it is a MIP.

    Uses the widget's ``viewer``, ``session``, ``shapes``, ``status`` and
    ``shapes_name``.
    """

    def _show_chosen(self, mip: Any, before: Any, before_shapes: Any) -> None:
        """Show ``mip`` and its polygons; hide ``before`` (the MIP shown until now) and
        its layers when it is another one, and fit the view to ``mip``."""
        if before is None or same_layer(before, mip):
            for layer in (mip, self.shapes):
                if layer is not None:
                    layer.visible = True
            return
        keep = [mip, self.shapes]
        for layer in self._layers_of(before, before_shapes):
            if layer in self.viewer.layers and not any(same_layer(layer, k) for k in keep):
                layer.visible = False
        for layer in keep:
            if layer is not None:
                layer.visible = True
        fit_to_layer(self.viewer, mip)

    def _keep_shapes_on_top(self) -> None:
        """Keep the polygons above layers added later (e.g. "MIP labels")."""
        try:
            layers = self.viewer.layers
            if self.shapes is None or self.shapes not in layers:
                return
            i = layers.index(self.shapes)
            if i != len(layers) - 1:
                layers.move(i, len(layers))
        except (RuntimeError, ValueError, IndexError):  # the layer went meanwhile
            return

    def _layers_of(self, mip: Any, shapes: Any) -> list[Any]:
        """The layers that show MIP ``mip``: itself, its polygons, its labels ("MIP
        labels", "mask <mip>") and a prediction made on it."""
        out = [mip, shapes]
        tag = (mip.metadata or {}).get("mip_of")
        names = (f"mask {mip.name}", self.shapes_name(mip))
        for layer in self.viewer.layers:
            kind = type(layer).__name__
            own_labels = kind == "Labels" and tag and (layer.metadata or {}).get("mip_of") == tag
            if layer.ndim == 2 and (layer.name in names or own_labels):
                out.append(layer)
        shown = self.session.prediction
        if shown is not None and same_layer(shown.target, mip):
            out += [shown.labels_layer, shown.boxes_layer]
        return [layer for layer in out if layer is not None]

    def _check_mip(self, layer: Any) -> None:
        """Warn (once per layer) when ``layer`` does not look like a sagittal MIP."""
        checked = getattr(self, "_mips_checked", None)
        if checked is None:
            checked = self._mips_checked = weakref.WeakSet()
        real = unwrap(layer)
        if real in checked:
            return
        checked.add(real)
        problems = mip_problems(np.asarray(layer.data))
        if problems:
            msg = (
                f"{layer.name} does not look like a sagittal MIP of a CT: "
                + "; ".join(problems)
                + ". Outline mode (O) and Predict expect windowed HU at 1 mm per pixel, "
                "as Preprocess CT makes from a CT; polygons drawn here are saved and "
                "exported like any others."
            )
            self.status.set(msg, "warning")
            notify(msg, "warning")
