"""View niceties shared by the widgets: the 2D camera on a layer, no idle slice slider.

:func:`fit_to_layer` centres the 2D camera on one layer and zooms to it. napari shows a
slider for every dimension of every layer, hidden ones too: with the CT hidden and its
2D MIP shown, a slice slider stays under the MIP and moves nothing the user sees.
:func:`follow_visible_dims` hides the sliders exactly while no visible layer has more
dimensions than the canvas displays.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ._layers import unwrap

__all__ = ["fit_to_layer", "follow_visible_dims", "sliders_needed"]

_FOLLOWED: weakref.WeakSet = weakref.WeakSet()


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


def sliders_needed(viewer: Any) -> bool:
    """True when a visible layer has more dimensions than the canvas displays."""
    shown = int(viewer.dims.ndisplay)
    return any(layer.visible and layer.ndim > shown for layer in viewer.layers)


def _qt_dims(viewer: Any) -> Any:
    """The viewer's slider panel (None without a window, e.g. a headless viewer)."""
    window = getattr(viewer, "window", None)
    qt_viewer = getattr(window, "_qt_viewer", None)
    return getattr(qt_viewer, "dims", None)


def follow_visible_dims(viewer: Any) -> None:
    """Show the viewer's sliders only while :func:`sliders_needed` (once per viewer)."""
    viewer = unwrap(viewer)
    if viewer in _FOLLOWED or _qt_dims(viewer) is None:
        return
    _FOLLOWED.add(viewer)
    ref = weakref.ref(viewer)

    def update(*_: Any) -> None:
        v = ref()
        dims = _qt_dims(v) if v is not None else None
        if dims is None:
            return
        try:
            dims.setVisible(sliders_needed(v))
        except RuntimeError:  # the window was closed
            return

    def watch(event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and event.type == "inserted":
            layer.events.visible.connect(update)
        update()

    for layer in viewer.layers:
        layer.events.visible.connect(update)
    viewer.layers.events.inserted.connect(watch)
    viewer.layers.events.removed.connect(update)
    viewer.dims.events.ndisplay.connect(update)
    update()
