"""View niceties shared by the widgets: the 2D camera on layers, Home on what shows, no
idle slice slider.

:func:`fit_to_layer` centres the 2D camera on one layer and zooms to it. napari's Home
button (``reset_view``) fits every layer, hidden ones too: with the CT and its 3D steps
hidden and the 2D MIP shown, the hidden volumes set the extent and the MIP shrinks into a
corner. :func:`home_fits_visible` makes a fit of all layers fit the visible ones. napari
also shows a slider for every dimension of every layer, hidden ones too: with the CT
hidden and its 2D MIP shown, a slice slider stays under the MIP and moves nothing the
user sees. :func:`follow_visible_dims` hides the sliders exactly while no visible layer
has more dimensions than the canvas displays.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ._layers import unwrap

__all__ = [
    "displayed_extent",
    "fit_to_layer",
    "fit_to_layers",
    "follow_visible_dims",
    "home_fits_visible",
    "sliders_needed",
]

_FOLLOWED: weakref.WeakSet = weakref.WeakSet()
_HOMED: weakref.WeakSet = weakref.WeakSet()


def displayed_extent(layers: Any) -> np.ndarray | None:
    """(2, 2) min / max world coordinates of ``layers`` in the two last dimensions (the
    2D view), pixels counted whole; None when no layer has them."""
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for layer in layers:
        try:
            ext = layer.extent
            world = np.asarray(ext.world, float)
            pixels = type(layer).__name__ in ("Image", "Labels")
            half = np.asarray(ext.step, float) / 2 if pixels else 0.0
        except (AttributeError, TypeError, ValueError):
            continue
        if world.shape[-1] < 2 or not np.all(np.isfinite(world)):
            continue
        lo = np.minimum(lo, (world[0] - half)[-2:])
        hi = np.maximum(hi, (world[1] + half)[-2:])
    if not np.all(np.isfinite(lo)):
        return None
    return np.stack([lo, hi])


def fit_to_layers(viewer: Any, layers: Any, margin: float = 0.05) -> bool:
    """Centre the 2D camera on ``layers`` and zoom so that they fill the canvas; False
    when there is nothing to fit. (napari's ``fit_to_view(layers=...)`` fails for a 2D
    layer among 3D ones.)"""
    extent = displayed_extent(layers)
    if extent is None:
        return False
    try:
        lo, hi = extent
        size = np.maximum(hi - lo, 1e-6)
        scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
        cam = scene.camera if scene is not None else viewer.camera
        centre = tuple(float(c) for c in (lo + hi) / 2)
        cam.center = (*tuple(cam.center)[:-2], *centre)
        canvas = getattr(getattr(viewer, "canvas", None), "size", None) or (600, 600)
        cam.zoom = (1 - margin) * float(np.min(np.asarray(canvas, float) / size))
    except Exception:  # a view nicety must never break showing a result
        return False
    return True


def fit_to_layer(viewer: Any, layer: Any, margin: float = 0.05) -> None:
    """Centre the 2D camera on ``layer`` and zoom so that it fills the canvas."""
    fit_to_layers(viewer, [layer], margin)


def home_fits_visible(viewer: Any) -> None:
    """Make a fit of every layer (napari's Home button, its first fit) fit the visible
    layers instead, in the 2D view (once per viewer). A fit of chosen layers
    (``fit_to_view(layers=...)``) is left as it is."""
    viewer = unwrap(viewer)
    events = getattr(getattr(viewer, "events", None), "reset_view", None)
    if viewer in _HOMED or events is None:
        return
    _HOMED.add(viewer)
    ref = weakref.ref(viewer)

    def refit(event: Any = None) -> None:
        v = ref()
        if v is None or int(v.dims.ndisplay) != 2:
            return
        layers = list(v.layers)
        shown = [la for la in layers if la.visible]
        if not shown or len(shown) == len(layers):
            return
        everything, visible = displayed_extent(layers), displayed_extent(shown)
        if everything is None or visible is None or np.allclose(everything, visible):
            return
        scene = getattr(v, "scene", None)
        cam = scene.camera if scene is not None else v.camera
        size = np.maximum(everything[1] - everything[0], 1e-6)
        off = np.abs(np.asarray(tuple(cam.center)[-2:], float) - everything.mean(axis=0))
        if np.all(off <= 0.02 * size):  # the camera was just fitted to every layer
            fit_to_layers(v, shown)

    events.connect(refit)


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
