"""Click-to-outline on the viewer: click inside a vertebra, get an editable polygon.

``OutlineTool(viewer, layer, on_polygon).install()`` adds an "outline mode" to a viewer
and the vertebra Shapes layer. ``O`` toggles it (bound on the viewer, the vertebra layer
and the 2D Image layers while installed: napari's own ``O``, "orient the plane along the
view", is a 3D action that a 2D MIP does not use, and napari's Shapes layer has no
``O``). In outline mode the
layer is put in pan / zoom mode, so napari draws nothing on a click, and a left click
(press and release without dragging; a drag still pans) outlines the vertebra under it:

* with a model (``get_outliner`` returns a :class:`~napari_vertebra.model.outline.
  ModelOutliner`): the highest-scoring detection under the click, even below the
  threshold (``source="model"`` with its score);
* otherwise, or when the model has no detection there: image analysis of the MIP
  (:func:`napari_vertebra.annotation.outline.outline_at`, ``source="outline"``).

The polygon goes to ``on_polygon(polygon, source=..., score=...)``, which the Annotate
widget implements (the class is the picker's; one undoable history step). No outline
found: a plain-words notification, nothing added. Choosing another layer mode (e.g.
``P`` to draw) leaves outline mode; ``O`` again or :meth:`OutlineTool.set_enabled`
returns to it. The work runs on a :class:`~._threading.TaskRunner` (off the GUI thread;
a click while one runs is ignored with a message).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._keys import KeyBindings
from ._status import StatusLine, error_message, notify
from ._threading import TaskRunner

__all__ = ["OUTLINE_KEY", "OutlineTool", "compute_outline"]

#: The key that toggles outline mode.
OUTLINE_KEY = "o"
#: A press and release further apart than this (canvas px of the world position) is a
#: drag (a pan), not a click.
_CLICK_TOLERANCE = 2.0

OnPolygon = Callable[..., Any]


def _default_image(viewer: Any) -> Callable[[], np.ndarray | None]:
    """The data of the top visible 2D Image layer of ``viewer``."""

    def get() -> np.ndarray | None:
        from napari.layers import Image

        for layer in reversed(list(viewer.layers)):
            if isinstance(layer, Image) and layer.visible and layer.ndim == 2:
                return np.asarray(layer.data)
        return None

    return get


class OutlineTool:
    """Outline mode on ``viewer`` for the Shapes ``layer``, active after :meth:`install`;
    see the module doc (``params``: :class:`~napari_vertebra.annotation.outline.
    OutlineParams` or None).

    ``on_polygon(polygon, source="outline" | "model", score=None)`` receives each outline
    ((N, 2) float, (row, col) in the layer's data coordinates); ``get_image()`` returns
    the 2D MIP (windowed HU, 1 mm/px; default: the top visible 2D Image layer);
    ``get_outliner()`` a :class:`~napari_vertebra.model.outline.ModelOutliner` or None;
    ``status``: a :class:`~._status.StatusLine` for messages (also notifications);
    ``inline``: run the work on the calling thread (tests).
    """

    def __init__(
        self,
        viewer: Any,
        layer: Any,
        on_polygon: OnPolygon,
        get_image: Callable[[], np.ndarray | None] | None = None,
        get_outliner: Callable[[], Any] | None = None,
        status: StatusLine | None = None,
        get_spacing: Callable[[], Any] | None = None,
        inline: bool | None = None,
        key: str = OUTLINE_KEY,
        params: Any = None,
    ) -> None:
        self.viewer = viewer
        self.layer = layer
        self.on_polygon = on_polygon
        self.get_image = get_image or _default_image(viewer)
        self.get_outliner = get_outliner or (lambda: None)
        self.get_spacing = get_spacing or (lambda: None)
        self.status = status
        self.params = params
        self.runner = TaskRunner(status=None, inline=inline)
        self.enabled = False
        #: the last outline computed: {"polygon", "source", "score", "class_id"} or None
        self.last: dict[str, Any] | None = None
        self._mode_before: str | None = None
        self._setting_mode = False
        self._keys = KeyBindings({key: self.toggle})

    def install(self) -> OutlineTool:
        """Bind the key, add the mouse callback and follow the layer's mode; returns the
        tool (:meth:`uninstall` removes it all)."""
        self._keys.bind([self.viewer, self.layer, *self._images()])
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        self.layer.events.mode.connect(self._on_mode)
        return self

    def _images(self) -> list[Any]:
        """The viewer's 2D Image layers: their keymap (napari's own O, "orient the plane")
        comes before the viewer's, so O is bound on them too while the tool is installed."""
        from napari.layers import Image

        return [la for la in self.viewer.layers if isinstance(la, Image) and la.ndim == 2]

    def _on_inserted(self, event: Any = None) -> None:
        self._keys.bind(self._images())

    # -- mode ----------------------------------------------------------------------------
    def toggle(self) -> None:
        """Turn outline mode on or off."""
        self.set_enabled(not self.enabled)

    def set_enabled(self, on: bool) -> None:
        """Outline mode on (the layer goes to pan / zoom) or off (its mode comes back)."""
        on = bool(on)
        if on == self.enabled:
            return
        self.enabled = on
        self._setting_mode = True
        try:
            if on:
                self._mode_before = str(self.layer.mode)
                self.layer.mode = "pan_zoom"
                self._say("Outline mode: click inside a vertebra (O to leave)")
            else:
                if str(self.layer.mode) == "pan_zoom" and self._mode_before:
                    self.layer.mode = self._mode_before
                self._say("Outline mode off")
        finally:
            self._setting_mode = False

    def _on_mode(self, event: Any = None) -> None:
        # the user chose another mode (e.g. P to draw): leave outline mode
        if self.enabled and not self._setting_mode and str(self.layer.mode) != "pan_zoom":
            self.enabled = False
            self._say("Outline mode off")

    def uninstall(self) -> None:
        """Remove the mouse callback, give the keys back, leave outline mode."""
        self.set_enabled(False)
        self._keys.unbind()
        self.viewer.layers.events.inserted.disconnect(self._on_inserted)
        if self._on_mouse in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse)
        try:
            self.layer.events.mode.disconnect(self._on_mode)
        except (TypeError, ValueError, RuntimeError) as e:  # already gone with the layer
            self._say(f"Outline tool: {e}", "info", popup=False)

    # -- clicks --------------------------------------------------------------------------
    def _on_mouse(self, viewer: Any, event: Any):
        """Viewer drag callback: a left click without drag in outline mode outlines."""
        if not self.enabled or getattr(event, "button", 1) not in (1, None):
            return
        if event.type != "mouse_press" or self.layer not in viewer.layers:
            return
        start = np.asarray(event.position, float)
        yield
        moved = False
        while event.type == "mouse_move":
            if np.abs(np.asarray(event.position, float) - start).max() > _CLICK_TOLERANCE:
                moved = True
            yield
        if not moved:
            point = np.asarray(self.layer.world_to_data(start), float)[-2:]
            self.outline_at(point)

    def outline_at(self, point_rc) -> bool:
        """Outline the vertebra at ``point_rc`` ((row, col) in the layer's data
        coordinates) and hand it to ``on_polygon``. False when it could not start (no
        image, busy)."""
        if self.runner.busy:
            self._say("Still outlining the last click; click again in a moment", "warning")
            return False
        image = self.get_image()
        if image is None or np.ndim(image) != 2:
            self._say("Outline: open a 2D sagittal MIP first", "warning")
            return False
        outliner, spacing = self.get_outliner(), self.get_spacing()
        point = (float(point_rc[0]), float(point_rc[1]))
        params = self.params

        def work() -> dict[str, Any] | None:
            return compute_outline(np.asarray(image), point, outliner, params, spacing)

        self.runner.start(
            work,
            on_done=lambda result: self._deliver(result, point),
            on_error=lambda exc: self._say(f"Outline failed: {error_message(exc)}", "warning"),
            description="Outlining",
            pass_progress=False,
        )
        return True

    def _deliver(self, result: dict[str, Any] | None, point: tuple[float, float]) -> None:
        self.last = result
        if result is None:
            self._say(
                f"No vertebra outline found at row {point[0]:.0f}, column {point[1]:.0f}: "
                "click inside a vertebral body, or draw the polygon (P)",
                "warning",
            )
            return
        self.on_polygon(result["polygon"], source=result["source"], score=result["score"])
        what = "model detection" if result["source"] == "model" else "outline"
        extra = f" (score {result['score']:.2f})" if result["score"] is not None else ""
        self._say(f"Added the {what}{extra}; edit its vertices or press Ctrl+Z")

    def _say(self, message: str, level: str = "info", popup: bool = True) -> None:
        if self.status is not None:
            self.status.set(message, "ok" if level == "info" else level)
        if popup and level != "info":
            notify(message, level)


def compute_outline(
    image: np.ndarray, point_rc, outliner: Any = None, params: Any = None, spacing: Any = None
) -> dict[str, Any] | None:
    """The outline at ``point_rc`` (Qt-free; runs on the worker): from ``outliner`` (a
    ModelOutliner; the MIP of ``spacing`` mm per pixel, None: 1 mm) when it has a
    detection there, else by image analysis. Returns
    {"polygon", "source", "score", "class_id"} (the model's class, anatomically ordered
    where it can be; None for image analysis) or None."""
    if outliner is not None:
        found = outliner.outline_at(image, point_rc, spacing)
        if found is not None:
            return {
                "polygon": found.polygon,
                "source": "model",
                "score": float(found.score),
                "class_id": int(
                    found.class_id if found.ordered_class_id is None else found.ordered_class_id
                ),
            }
    from napari_vertebra.annotation.outline import outline_at

    poly = outline_at(image, point_rc, params)
    if poly is None:
        return None
    return {"polygon": poly, "source": "outline", "score": None, "class_id": None}
