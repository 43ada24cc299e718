"""Drawing on the vertebra Shapes layer: the class picker, keys, new / cancelled /
refused polygons and the layer's features (a mixin of :class:`~.annotate.AnnotateWidget`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from napari_vertebra.annotation.level_tools import next_missing
from napari_vertebra.annotation.types import VertebraAnnotation
from napari_vertebra.core.labels import PAPER, class_colour, class_id, class_name, get_class_set

from ._shapes import COLUMNS, FACE_ALPHA, empty_features, hex_rgba, shapes_to_annotations, typed
from ._status import error_message, notify

__all__ = ["BOUND_KEYS", "DIRECTIONS", "NUMBER_KEYS", "VIEWER_KEYS", "AnnotateDrawing"]

#: Levels the picker does not move to by itself (chosen by hand): T13 and L6.
_TRANSITIONAL = frozenset({class_id("T13"), class_id("L6")})
#: What the class picker does after a polygon is drawn.
DIRECTIONS = ("down the spine (T1 → L5)", "up the spine (L5 → T1)", "stay")
#: Keys bound on the vertebra Shapes layer: next / previous class, set class, save,
#: cancel the polygon being drawn, undo, redo (the last two also on the viewer).
BOUND_KEYS = (".", ",", "Shift-C", "Shift-S", "Escape", "Control-Z", "Control-Shift-Z")
VIEWER_KEYS = ("Control-Z", "Control-Shift-Z")
#: Number keys: the digit row picks a vertebra of the picker's region by position, T1..T12
#: in the thoracic region (1..9, 0 = T10, - = T11, = = T12), L1..L5 in the lumbar region.
#: On the vertebra layer they replace napari's Shapes mode digits (1..7), which all but 7
#: (transform, a button) have letter keys for.
NUMBER_KEYS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "-", "=")


class AnnotateDrawing:
    """Mixin: the class picker, the keys and drawing on ``self.shapes``.

    Uses the widget's ``viewer``, ``shapes``, ``mip_layer``, ``vertebra``, ``direction``,
    ``swatch``, ``status``, ``_suspend``, ``_n_shapes``, ``_next_instance`` and the
    saving mixin's ``_after_change`` / ``save`` / ``undo`` / ``redo``.
    """

    def _bind_keys(self, layer: Any) -> None:
        # layer keymaps come before the viewer's: Ctrl+Z is bound here too (napari's
        # Shapes layer has no undo of its own), and Escape overrides napari's "finish
        # drawing" so that it cancels the polygon instead
        actions = (
            lambda _layer: self.next_class(),
            lambda _layer: self.previous_class(),
            lambda _layer: self.assign_class_to_selected(),
            lambda _layer: self.save(explicit=True),
            lambda _layer: self.cancel_drawing(),
            lambda _layer: self.undo(),
            lambda _layer: self.redo(),
        )
        for key, fn in zip(BOUND_KEYS, actions, strict=True):
            layer.bind_key(key, fn, overwrite=True)
        for key in NUMBER_KEYS:
            layer.bind_key(key, _pick_key(self, key), overwrite=True)

    def _bind_viewer_keys(self, on: bool = True) -> None:
        """Ctrl+Z / Ctrl+Shift+Z on the viewer (when the MIP or another layer is active;
        a Labels layer keeps its own paint undo)."""
        if on == self._viewer_keys_bound:
            return
        actions = (lambda _viewer: self.undo(), lambda _viewer: self.redo())
        for key, fn in zip(VIEWER_KEYS, actions, strict=True):
            try:
                self.viewer.bind_key(key, fn if on else None, overwrite=True)
            except (TypeError, ValueError, KeyError) as e:
                notify(f"Annotate: the {key} key could not be bound ({e}); use the buttons")
        self._viewer_keys_bound = on

    # -- class picker ------------------------------------------------------------------
    @property
    def current_class(self) -> int:
        """Class id of the picker (1..17 T1..L5; 18..21 C7, T13, L6, S1)."""
        return class_id(self.vertebra.value)

    @property
    def levels_order(self) -> tuple[int, ...]:
        """Class ids of the chosen class set, superior to inferior."""
        return get_class_set(self.class_set.value).ids_in_order()

    @property
    def walk_order(self) -> tuple[int, ...]:
        """:attr:`levels_order` without T13 and L6 (unless the picker is on one): the
        picker moves on by itself from T12 to L1 and from L5 to the sacrum, as in most
        spines; a transitional level is chosen by hand (or with the arrows)."""
        keep = self.current_class
        return tuple(c for c in self.levels_order if c not in _TRANSITIONAL or c == keep)

    def _on_class_set_changed(self, *_: Any) -> None:
        levels = list(get_class_set(self.class_set.value).levels)
        current = self.vertebra.value
        self.vertebra.choices = levels
        self.vertebra.value = current if current in levels else "L1"

    def follow_class_set(self, class_ids: Any) -> None:
        """Switch the picker to the extended class set when ``class_ids`` hold one of its
        levels (so no polygon shows a class the picker cannot choose)."""
        if self.class_set.value != "extended" and any(int(c) not in PAPER.ids for c in class_ids):
            self.class_set.value = "extended"

    def _on_class_changed(self, *_: Any) -> None:
        colour = class_colour(self.current_class)
        self.swatch.value = (
            f"<span style='color:{colour}; font-size:16px'>■■■</span> class "
            + str(self.current_class)
        )
        self._update_defaults()

    def _update_defaults(self) -> None:
        if self.shapes is None:
            return
        cid = self.current_class
        with self._suspended():
            self.shapes.feature_defaults = {
                "class_id": cid,
                "vertebra": class_name(cid),
                "instance": self._next_instance,
                "score": np.nan,
                "source": "hand",
            }
            self.shapes.current_edge_color = class_colour(cid)
            self.shapes.current_face_color = hex_rgba(class_colour(cid), FACE_ALPHA)

    def next_class(self, step: int = 1) -> None:
        """Move the picker ``step`` vertebrae down the spine (negative: up), clamped."""
        order = self.levels_order
        i = min(len(order) - 1, max(0, order.index(self.current_class) + step))
        self.vertebra.value = class_name(order[i])

    def pick_number(self, key: str) -> bool:
        """Number key ``key`` ("1".."9", "0", "-", "="): the vertebra at that position of
        the digit row in the picker's region (see :data:`NUMBER_KEYS`); False if none."""
        n = NUMBER_KEYS.index(key) + 1
        lumbar = self.vertebra.value.startswith("L")
        if lumbar and n > 5:
            self.status.set(f"key {key}: the lumbar spine has L1..L5 (',' goes up to T12)", "info")
            return False
        self.vertebra.value = f"{'L' if lumbar else 'T'}{n}"
        return True

    def previous_class(self) -> None:
        """Move the picker one vertebra up the spine (towards T1)."""
        self.next_class(-1)

    def _advance(self, present: Any = None) -> None:
        """Move the picker in the chosen direction to the next vertebra not yet drawn
        (``present``: class ids drawn; default those of the Shapes layer)."""
        d = self.direction.value
        if d == DIRECTIONS[2]:
            return
        step = 1 if d == DIRECTIONS[0] else -1
        if present is None:
            present = [a.class_id for a in self.annotations()]
        order = self.walk_order
        i = order.index(self.current_class) + step
        if not 0 <= i < len(order):
            i = min(len(order) - 1, max(0, i))
        nxt = next_missing(present, order[i], step, order)
        if nxt is not None:
            self.vertebra.value = class_name(nxt)

    def pick_first_missing(self) -> None:
        """Move the picker to the first vertebra not yet drawn, from the picker on in the
        chosen direction (then the other way); stays when all are drawn."""
        step = -1 if self.direction.value == DIRECTIONS[1] else 1
        present = [a.class_id for a in self.annotations()]
        nxt = next_missing(present, self.current_class, step, self.walk_order)
        if nxt is not None:
            self.vertebra.value = class_name(nxt)

    # -- drawing -----------------------------------------------------------------------
    def draw_polygon(self) -> None:
        """Select the Shapes layer and switch it to polygon drawing."""
        if self.shapes is None and self.mip_layer.value is not None:
            self._on_mip_changed()  # (re)creates the layer with the saved polygons
        if self.shapes is None:
            self.fail("Annotate: choose a MIP image first (run Preprocess CT or open one)")
            return
        self.viewer.layers.selection.active = self.shapes
        self.shapes.mode = "add_polygon"

    def delete_selected(self) -> None:
        """Delete the selected shapes (saved at once)."""
        if self.shapes is not None and self.shapes.selected_data:
            self.shapes.remove_selected()

    def cancel_drawing(self) -> bool:
        """Escape: drop the polygon being drawn (nothing saved, picker unchanged).

        When no polygon is being drawn, does what napari's Escape does (finish drawing).
        Returns True when a polygon was cancelled.
        """
        layer = self.shapes
        if layer is None:
            return False
        if not getattr(layer, "_is_creating", False):
            layer._finish_drawing()
            return False
        index = layer._moving_value[0]
        with self._suspended():
            layer._is_creating = False  # finish without keeping the polygon
            layer._finish_drawing()
            if index is not None and 0 <= index < len(layer.data):
                layer.selected_data = {index}
                layer.remove_selected()
        self._n_shapes = len(layer.data)
        self._fix_features()
        self._restyle()
        self.status.set("polygon cancelled (Escape): nothing saved", "info")
        return True

    def assign_class_to_selected(self) -> None:
        """Give the selected shapes the picker's class (one new vertebra instance)."""
        if self.shapes is None or not self.shapes.selected_data:
            self.status.set("select shapes first (S, then click)", "warning")
            return
        feats = self.shapes.features.copy()
        cid = self.current_class
        for i in self.shapes.selected_data:
            feats.loc[i, "class_id"] = cid
            feats.loc[i, "vertebra"] = class_name(cid)
            feats.loc[i, "instance"] = self._next_instance
        self._next_instance += 1
        with self._suspended():
            self.shapes.features = feats
        self._restyle()
        self._after_change(label=f"set class {class_name(cid)}")
        self._advance()

    @contextmanager
    def _suspended(self):
        self._suspend += 1
        try:
            yield
        finally:
            self._suspend -= 1

    def _on_shapes_data(self, event: Any) -> None:
        if self._suspend:
            return
        action = str(getattr(event, "action", "changed"))
        if action not in ("added", "removed", "changed"):
            return
        try:
            n = len(self.shapes.data)
            label = {"removed": "delete", "changed": "edit vertices"}.get(action, "draw")
            if action == "added":
                if n <= self._n_shapes:
                    label = None
                    if len(self.shapes.features) > n:  # napari dropped a polygon of < 3
                        self._refuse_small(0)  # points and left its feature row
                else:
                    label = self._label_new_shapes(range(self._n_shapes, n))
            self._n_shapes = len(self.shapes.data)
            self._fix_features()
            self._restyle()
            if label:
                self._after_change(label=label)
        except Exception as e:  # never let an annotation bug escape into napari
            self.fail(f"Annotate: {error_message(e)}")

    def _fix_features(self) -> None:
        """One feature row per shape (napari leaves the row of a polygon it dropped)."""
        layer = self.shapes
        if layer is not None and len(layer.features) > len(layer.data):
            with self._suspended():
                layer.features = typed(layer.features.iloc[: len(layer.data)])

    def _refuse_small(self, n: int) -> None:
        msg = (
            "A polygon needs at least 3 points: not kept"
            + (f" ({n} refused)" if n > 1 else "")
            + ". Click 3 or more vertices, then Enter; Escape cancels."
        )
        self.status.set(msg, "warning")
        notify(msg, "warning")

    def _label_new_shapes(self, indices: range) -> str | None:
        """Give new shapes the picker's class (refusing polygons of < 3 points); the
        history label of the change, or None when nothing was kept."""
        layer = self.shapes
        small = [
            i
            for i in indices
            if layer.shape_type[i] == "polygon"
            and len(np.unique(np.round(np.asarray(layer.data[i])[:, -2:], 6), axis=0)) < 3
        ]
        if small:
            with self._suspended():
                layer.selected_data = set(small)
                layer.remove_selected()
            self._refuse_small(len(small))
        n_new = len(indices) - len(small)
        if n_new <= 0:
            return None
        feats = layer.features.copy().reset_index(drop=True)
        names = []
        for i in range(indices.start, indices.start + n_new):
            cid = self.current_class
            feats.loc[i, "class_id"] = cid
            feats.loc[i, "vertebra"] = class_name(cid)
            feats.loc[i, "instance"] = self._next_instance
            feats.loc[i, "score"] = np.nan
            feats.loc[i, "source"] = "hand"
            names.append(class_name(cid))
            self._next_instance += 1
            self._advance(present=[int(c) for c in feats["class_id"].iloc[: i + 1]])
        with self._suspended():
            layer.features = typed(feats.iloc[: len(layer.data)])
        self._update_defaults()
        return "draw " + ", ".join(names)

    def _restyle(self) -> None:
        """Edge / face colours of every shape from its class."""
        layer = self.shapes
        if layer is None or len(layer.data) == 0:
            return
        edges, faces = [], []
        for v in layer.features["class_id"]:
            try:
                c = class_colour(int(v))
            except (TypeError, ValueError):
                c = "#ffffff"
            edges.append(hex_rgba(c))
            faces.append(hex_rgba(c, FACE_ALPHA))
        with self._suspended():
            layer.edge_color = np.asarray(edges)
            layer.face_color = np.asarray(faces)
            layer.refresh_text()

    # -- annotations in and out ----------------------------------------------------------
    def annotations(self) -> list[VertebraAnnotation]:
        """The current polygons as annotations (parts grouped by instance)."""
        if self.shapes is None:
            return []
        return shapes_to_annotations(self.shapes)[0]

    def set_annotations(
        self,
        annotations: list[VertebraAnnotation],
        save: bool = True,
        label: str = "replace polygons",
    ) -> None:
        """Replace the shapes with ``annotations``; when ``save``, one undoable step named
        ``label`` (Ctrl+Z brings the old ones back)."""
        if self.shapes is None:
            raise ValueError("no MIP image layer: choose one first")
        self.follow_class_set([a.class_id for a in annotations])
        polys, rows = [], []
        for inst, a in enumerate(annotations, start=1):
            for p in a.polygons:
                if len(p) < 2:
                    continue
                polys.append(np.asarray(p, float))
                rows.append((a.class_id, a.name, inst, a.score, getattr(a, "source", "hand")))
        layer = self.shapes
        with self._suspended():
            layer.selected_data = set()
            layer.data = []
            if polys:
                layer.add(polys, shape_type="polygon")
                layer.features = typed(pd.DataFrame(rows, columns=list(COLUMNS)))
            else:  # napari keeps the old rows when the data is emptied
                layer.features = empty_features()
        self._n_shapes = len(layer.data)
        self._next_instance = len(annotations) + 1
        self._restyle()
        self._update_defaults()
        self._after_change(save=save, label=label)


def _pick_key(widget: Any, key: str) -> Any:
    return lambda _layer: widget.pick_number(key)
