"""The "Annotate vertebrae" dock widget: class polygons on a sagittal MIP, autosaved.

Each MIP Image layer gets a Shapes layer "vertebrae <mip>" whose shapes carry the
features ``class_id`` (1..17), ``vertebra`` ("T1".."L5") and ``instance`` (shapes that
share it are parts of one vertebra). A newly drawn polygon takes the class of the picker,
which then moves to the next vertebra not yet drawn. Every change is checked (warnings
list) and saved at once to an :class:`~napari_vertebra.annotation.project.AnnotationProject`
folder, on a background thread, as one step of the MIP's undo history (Ctrl+Z /
Ctrl+Shift+Z, kept in the project, so it survives a restart); selecting a MIP whose key
is in the project loads its polygons. Escape cancels the polygon being drawn; a polygon
of fewer than 3 points is refused with a message.
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, Label, LineEdit, PushButton
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QFileDialog, QListWidget, QListWidgetItem

from napari_vertebra.annotation.history import MAX_STEPS, next_missing, shift_levels
from napari_vertebra.annotation.polygons import (
    annotations_to_label_image,
    check_image_annotations,
    label_image_to_annotations,
)
from napari_vertebra.annotation.project import AnnotationProject, safe_key
from napari_vertebra.annotation.types import AnnotatedImage, VertebraAnnotation
from napari_vertebra.core.labels import VERTEBRAE, class_colour, class_id, class_name

from ._base import VertebraWidget, layer_combo
from ._layers import (
    class_label_colormap,
    class_label_features,
    find_layer,
    same_layer,
    upsert_layer,
)
from ._threading import error_message, notify

if TYPE_CHECKING:  # napari passes the viewer to a parameter annotated like this
    import napari.viewer

__all__ = ["DIRECTIONS", "AnnotateWidget", "default_project_dir", "shapes_to_annotations"]

#: What the class picker does after a polygon is drawn.
DIRECTIONS = ("down the spine (T1 → L5)", "up the spine (L5 → T1)", "stay")
FACE_ALPHA = 0.25
#: Keys bound on the vertebra Shapes layer: next / previous class, set class, save,
#: cancel the polygon being drawn, undo, redo (the last two also on the viewer).
_BOUND_KEYS = (".", ",", "Shift-C", "Shift-S", "Escape", "Control-Z", "Control-Shift-Z")
_VIEWER_KEYS = ("Control-Z", "Control-Shift-Z")
#: Number keys: the digit row picks a vertebra of the picker's region by position, T1..T12
#: in the thoracic region (1..9, 0 = T10, - = T11, = = T12), L1..L5 in the lumbar region.
#: On the vertebra layer they replace napari's Shapes mode digits (1..7), which all but 7
#: (transform, a button) have letter keys for.
NUMBER_KEYS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "-", "=")
#: History entries shown in the widget (newest first).
_HISTORY_SHOWN = 6
SHORTCUTS = (
    "<b>Shortcuts</b> (Shapes layer selected): "
    "<b>P</b> draw polygon (click vertices, Enter / double-click ends, "
    "<b>Esc</b> cancels) · "
    "<b>.</b> / <b>,</b> next / previous vertebra · "
    "<b>1</b>..<b>5</b> L1..L5 (lumbar), <b>1</b>..<b>9 0 - =</b> T1..T12 (thoracic) · "
    "<b>Shift+C</b> give selected shapes the picked class · "
    "<b>D</b> edit vertices · <b>S</b> select · <b>Delete</b> delete selected · "
    "<b>Ctrl+Z</b> / <b>Ctrl+Shift+Z</b> undo / redo "
    f"(last {MAX_STEPS} changes per MIP, kept in the project) · "
    "<b>Shift+S</b> save now (every change is autosaved)"
)


def default_project_dir() -> Path:
    """``$NAPARI_VERTEBRA_PROJECT`` or ``~/napari-vertebra-projects/default``."""
    env = os.environ.get("NAPARI_VERTEBRA_PROJECT")
    if env:
        return Path(env).expanduser()
    return Path.home() / "napari-vertebra-projects" / "default"


def _hex_rgba(hex_colour: str, alpha: float = 1.0) -> np.ndarray:
    h = hex_colour.lstrip("#")
    return np.array([int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)] + [alpha])


def _ellipse_polygon(corners: np.ndarray, n: int = 32) -> np.ndarray:
    centre = corners.mean(axis=0)
    a = (corners[1] - corners[0]) / 2
    b = (corners[3] - corners[0]) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(t) * a + np.sin(t) * b


def shapes_to_annotations(layer: Any) -> tuple[list[VertebraAnnotation], list[str]]:
    """The annotations of a vertebra Shapes layer and messages about unusable shapes.

    Shapes sharing ``instance`` become the parts of one annotation (ordered by first
    appearance); its ``score`` and ``source`` come from the features of its first part.
    Rectangles count as polygons, ellipses are sampled; paths and lines are kept as their
    vertices (and reported).
    """
    msgs: list[str] = []
    feats = layer.features
    groups: dict[Any, tuple[int, list[np.ndarray]]] = {}
    extras: dict[Any, dict] = {}
    for i, (data, stype) in enumerate(zip(layer.data, layer.shape_type, strict=True)):
        try:
            cid = int(feats["class_id"].iloc[i])
            class_name(cid)  # raises for 0 / out of range
        except (KeyError, ValueError, TypeError, IndexError):
            msgs.append(f"shape {i + 1}: no vertebra class (select it, pick a class, Shift+C)")
            continue
        pts = np.asarray(data, float)[:, -2:]
        if stype == "ellipse":
            pts = _ellipse_polygon(pts)
        elif stype in ("path", "line", "polyline"):
            msgs.append(f"{class_name(cid)}: shape {i + 1} is a {stype}, not a closed polygon")
        inst = feats["instance"].iloc[i] if "instance" in feats else i
        key = (cid, -1 - i) if pd.isna(inst) or int(inst) <= 0 else (cid, int(inst))
        if key not in groups:
            extras[key] = _row_extras(feats, i)
        groups.setdefault(key, (cid, []))[1].append(pts)
    out = [VertebraAnnotation(cid, polys, **extras[k]) for k, (cid, polys) in groups.items()]
    return out, msgs


def _row_extras(feats: pd.DataFrame, i: int) -> dict:
    """``score`` / ``source`` keyword arguments of an annotation from feature row ``i``."""
    out: dict = {}
    if "score" in feats:
        score = feats["score"].iloc[i]
        out["score"] = None if pd.isna(score) else float(score)
    if "source" in feats and _HAS_SOURCE:
        source = feats["source"].iloc[i]
        if isinstance(source, str) and source:
            out["source"] = source
    return out


class AnnotateWidget(VertebraWidget):
    """Annotate vertebrae on a MIP with class polygons; autosave; checks; import/export.

    Attributes: ``mip_layer`` (picker of 2D Image layers), ``project_dir`` (FileEdit),
    ``image_key`` (LineEdit), ``vertebra`` (class picker, names T1..L5), ``direction``,
    ``ct_layer`` / ``labels3d_layer`` / ``labels_convention`` / ``min_visible`` (labels
    from 3D), ``mask_layer`` (2D Labels picker), buttons ``*_button``, ``warnings_list``
    (QListWidget), ``warnings`` (list of str), ``project`` (the open
    :class:`AnnotationProject`), ``shapes`` (the current Shapes layer). Handlers:
    :meth:`draw_polygon`, :meth:`next_class`, :meth:`previous_class`,
    :meth:`assign_class_to_selected`, :meth:`save`, :meth:`annotations`,
    :meth:`set_annotations`, :meth:`labels_from_3d`, :meth:`mask_to_polygons`,
    :meth:`polygons_to_mask`, :meth:`import_annotations`, :meth:`export_coco`,
    :meth:`export_via`, :meth:`open_project_image`.
    """

    def __init__(
        self, viewer: napari.viewer.Viewer, parent: Any = None, project_dir: str | None = None
    ):
        super().__init__(viewer, parent)
        self.project: AnnotationProject | None = None
        self.shapes: Any = None
        self.warnings: list[str] = []
        self.n_saves = 0
        self._suspend = 0
        self._n_shapes = 0
        self._next_instance = 1
        self._mip: Any = None
        self._notified: set[str] = set()

        is2d = lambda layer: layer.ndim == 2 and not getattr(layer, "rgb", False)  # noqa: E731
        self.mip_layer = layer_combo(viewer, "Image", "MIP image", predicate=is2d)
        self.project_dir = FileEdit(
            mode="d", value=str(project_dir or default_project_dir()), label="project folder"
        )
        self.project_dir.tooltip = "Annotations are saved here after every change."
        self.image_key = LineEdit(value="", label="image key")
        self.image_key.tooltip = "Name of this MIP in the project (a safe file name)."
        self.project_images = ComboBox(choices=self._project_keys, label="project images")
        self.add_form(self.mip_layer, self.project_dir, self.image_key, self.project_images)
        self.open_button = PushButton(text="Open project image")
        self.add_buttons(self.open_button)

        self.vertebra = ComboBox(value="L1", choices=list(VERTEBRAE), label="vertebra")
        self.swatch = Label(value="")
        self.direction = ComboBox(value=DIRECTIONS[0], choices=list(DIRECTIONS), label="then")
        self.add_form(self.vertebra, self.swatch, self.direction)
        self.draw_button = PushButton(text="Draw polygon (P)")
        self.assign_button = PushButton(text="Set class (Shift+C)")
        self.delete_button = PushButton(text="Delete selected")
        self.add_buttons(self.draw_button, self.assign_button, self.delete_button)
        self.undo_button = PushButton(text="Undo (Ctrl+Z)")
        self.redo_button = PushButton(text="Redo (Ctrl+Shift+Z)")
        self.add_buttons(self.undo_button, self.redo_button)
        self.shift_up_button = PushButton(text="Shift levels up ↑")
        self.shift_up_button.tooltip = "Every label of this MIP one level up (L2 → L1)."
        self.shift_down_button = PushButton(text="Shift levels down ↓")
        self.shift_down_button.tooltip = "Every label of this MIP one level down (L1 → L2)."
        self.add_buttons(self.shift_up_button, self.shift_down_button)
        self.history_list = QListWidget()
        self.history_list.setMaximumHeight(92)
        self.history_list.setToolTip("Changes of this MIP, newest first (greyed: undone)")
        self.add(self.history_list)
        self.autosave_label = Label(value="not saved yet")
        self.add(self.autosave_label)

        self.ct_layer = layer_combo(
            viewer, "Image", "CT (3D)", nullable=True, predicate=lambda la: la.ndim == 3
        )
        self.labels3d_layer = layer_combo(
            viewer, "Labels", "3D labels", nullable=True, predicate=lambda la: la.ndim == 3
        )
        self.labels_convention = ComboBox(
            value="auto", choices=["auto", "class ids", "totalsegmentator", "verse"],
            label="label ids",
        )  # fmt: skip
        self.min_visible = FloatSpinBox(
            value=0.5, min=0.0, max=1.0, step=0.05, label="min visible"
        )
        self.min_visible.tooltip = "Drop vertebrae less visible than this fraction (cut ones)."
        self.mask_layer = layer_combo(
            viewer, "Labels", "2D mask", nullable=True, predicate=lambda la: la.ndim == 2
        )
        self.add_form(
            self.ct_layer,
            self.labels3d_layer,
            self.labels_convention,
            self.min_visible,
            self.mask_layer,
        )
        self.from3d_button = PushButton(text="Labels from 3D")
        self.mask_to_poly_button = PushButton(text="Mask → polygons")
        self.poly_to_mask_button = PushButton(text="Polygons → mask")
        self.add_buttons(self.from3d_button, self.mask_to_poly_button, self.poly_to_mask_button)
        self.import_button = PushButton(text="Import COCO/VIA…")
        self.export_coco_button = PushButton(text="Export COCO…")
        self.export_via_button = PushButton(text="Export VIA…")
        self.add_buttons(self.import_button, self.export_coco_button, self.export_via_button)

        self.add(Label(value="<b>Checks</b>"))
        self.warnings_list = QListWidget()
        self.warnings_list.setMaximumHeight(110)
        self.add(self.warnings_list)
        self.help_label = Label(value=SHORTCUTS)
        self.help_label.native.setWordWrap(True)
        self.add(self.help_label)
        self.add_status()

        self.mip_layer.changed.connect(self._on_mip_changed)
        self.project_dir.changed.connect(self._on_project_dir_changed)
        self.image_key.changed.connect(self._on_key_edited)
        self.vertebra.changed.connect(self._on_class_changed)
        self.open_button.changed.connect(lambda *_: self.open_project_image())
        self.draw_button.changed.connect(lambda *_: self.draw_polygon())
        self.assign_button.changed.connect(lambda *_: self.assign_class_to_selected())
        self.delete_button.changed.connect(lambda *_: self.delete_selected())
        self.undo_button.changed.connect(lambda *_: self.undo())
        self.redo_button.changed.connect(lambda *_: self.redo())
        self.shift_up_button.changed.connect(lambda *_: self.shift_levels(-1))
        self.shift_down_button.changed.connect(lambda *_: self.shift_levels(1))
        self.from3d_button.changed.connect(lambda *_: self.labels_from_3d())
        self.mask_to_poly_button.changed.connect(lambda *_: self.mask_to_polygons())
        self.poly_to_mask_button.changed.connect(lambda *_: self.polygons_to_mask())
        self.import_button.changed.connect(lambda *_: self.import_annotations())
        self.export_coco_button.changed.connect(lambda *_: self.export_coco())
        self.export_via_button.changed.connect(lambda *_: self.export_via())

        self._viewer_keys_bound = False
        self._bind_viewer_keys()
        self._open_project(quiet=True)
        self.refresh_choices()
        self._on_class_changed()
        self._on_mip_changed()

    # -- project -----------------------------------------------------------------------
    def _open_project(self, quiet: bool = False) -> bool:
        folder = Path(str(self.project_dir.value)).expanduser()
        if self.project is not None:
            try:
                self.project.close()
            except OSError as e:
                self.fail(f"Could not save annotations: {error_message(e)}")
        try:
            self.project = AnnotationProject(folder, background=True)
        except (ValueError, OSError) as e:
            self.project = None
            if not quiet:
                self.fail(f"Project: {error_message(e)}")
            return False
        self._refresh_project_images()
        return True

    def _project_keys(self, *_: Any) -> list[str]:
        if self.project is None:
            return []
        try:
            return self.project.list_images()
        except Exception:
            return []

    def _refresh_project_images(self) -> None:
        try:
            self.project_images.reset_choices()
        except RuntimeError:
            pass

    def _on_project_dir_changed(self, *_: Any) -> None:
        had = self.annotations() if self.shapes is not None else []
        if not self._open_project():
            return
        key = self.image_key.value
        if key and self.project is not None and self.project.load(key):
            self._load_saved(key)
        elif had:
            self.save()  # carry the current polygons into the new project
        self.status.set(f"project: {self.project.folder if self.project else '-'}", "info")

    # -- MIP selection -----------------------------------------------------------------
    def key_for(self, layer: Any) -> str:
        """The project key of a MIP layer (metadata, stored name, or scan + shape)."""
        meta = layer.metadata or {}
        if meta.get("project_key"):
            return safe_key(meta["project_key"])
        named = safe_key(layer.name)
        if self.project is not None and named in self.project:
            return named
        source = meta.get("source_path") or ""
        base = Path(source).name if source else (meta.get("mip_of") or layer.name)
        h, w = np.asarray(layer.data).shape[-2:]
        return safe_key(f"{safe_key(base)}_{h}x{w}")

    def scan_for(self, layer: Any) -> str:
        """The scan (patient) name of a MIP layer: its CT's file name or its name."""
        meta = layer.metadata or {}
        source = meta.get("source_path") or ""
        return safe_key(Path(source).name if source else (meta.get("mip_of") or layer.name))

    def _on_layers_changed(self, event: Any = None) -> None:
        super()._on_layers_changed(event)
        kind = getattr(event, "type", "")
        if kind == "removed" and same_layer(getattr(event, "value", None), self.shapes):
            # the polygons stay saved; choosing the MIP again brings them back
            self._detach_shapes()
            self.shapes, self._mip = None, None
            return
        added = getattr(event, "value", None) if kind == "inserted" else None
        if added is not None and not same_layer(added, self.shapes) and added.ndim == 2:
            QTimer.singleShot(0, self._keep_shapes_on_top)

    def _keep_shapes_on_top(self) -> None:
        """Keep the polygons above layers added later (e.g. "MIP labels")."""
        try:
            layers = self.viewer.layers
            if self.shapes is None or self.shapes not in layers:
                return
            i = layers.index(self.shapes)
            if i != len(layers) - 1:
                layers.move(i, len(layers))
        except (RuntimeError, ValueError, IndexError):
            pass

    def _on_mip_changed(self, *_: Any) -> None:
        layer = self.mip_layer.value
        if (
            same_layer(layer, self._mip)
            and self.shapes is not None
            and self.shapes in self.viewer.layers
        ):
            return
        self._mip = layer
        if layer is None:
            self.shapes = None
            return
        key = self.key_for(layer)
        with self.image_key.changed.blocked():
            self.image_key.value = key
        self._attach_shapes(layer)
        if len(self.shapes.data) == 0:
            self._load_saved(key)
        self._after_change(save=False)

    def _on_key_edited(self, *_: Any) -> None:
        layer = self.mip_layer.value
        key = safe_key(self.image_key.value) if self.image_key.value else ""
        if layer is None or not key:
            return
        layer.metadata["project_key"] = key
        if self.project is not None and self.project.load(key):
            self._load_saved(key)
        else:
            self.save()

    def shapes_name(self, mip_layer: Any) -> str:
        return f"vertebrae {mip_layer.name}"

    def _attach_shapes(self, mip: Any) -> None:
        name = self.shapes_name(mip)
        layer = find_layer(self.viewer, name, "Shapes")
        if layer is None:
            with self._suspended():
                layer = self.viewer.add_shapes(
                    ndim=2,
                    name=name,
                    scale=tuple(mip.scale),
                    translate=tuple(mip.translate),
                    features=_empty_features(),
                    text={"string": "{vertebra}", "color": "white", "size": 10},
                    edge_width=1.5,
                    opacity=1.0,
                )
            layer.metadata["vertebra_annotations"] = True
        if self.shapes is not None and not same_layer(self.shapes, layer):
            self._detach_shapes()
        if not same_layer(self.shapes, layer):
            self.shapes = layer
            layer.events.data.connect(self._on_shapes_data)
            self._bind_keys(layer)
        self._n_shapes = len(layer.data)
        inst = layer.features["instance"] if "instance" in layer.features else []
        self._next_instance = int(np.max(inst)) + 1 if len(inst) else 1
        self._update_defaults()

    def _detach_shapes(self) -> None:
        try:
            self.shapes.events.data.disconnect(self._on_shapes_data)
            for key in (*_BOUND_KEYS, *NUMBER_KEYS):
                self.shapes.bind_key(key, None, overwrite=True)
        except Exception:
            pass

    def close_widget(self) -> None:
        if self.shapes is not None:
            self._detach_shapes()
        self._bind_viewer_keys(False)
        if self.project is not None:
            try:
                self.project.close()  # every pending save reaches the disk
            except OSError as e:
                notify(f"Could not save annotations: {error_message(e)}", "error")
        super().close_widget()

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
        for key, fn in zip(_BOUND_KEYS, actions, strict=True):
            layer.bind_key(key, fn, overwrite=True)
        for key in NUMBER_KEYS:
            layer.bind_key(key, _pick_key(self, key), overwrite=True)

    def _bind_viewer_keys(self, on: bool = True) -> None:
        """Ctrl+Z / Ctrl+Shift+Z on the viewer (when the MIP or another layer is active;
        a Labels layer keeps its own paint undo)."""
        if on == self._viewer_keys_bound:
            return
        actions = (lambda _viewer: self.undo(), lambda _viewer: self.redo())
        for key, fn in zip(_VIEWER_KEYS, actions, strict=True):
            try:
                self.viewer.bind_key(key, fn if on else None, overwrite=True)
            except (TypeError, ValueError, KeyError) as e:
                notify(f"Annotate: the {key} key could not be bound ({e}); use the buttons")
        self._viewer_keys_bound = on

    # -- class picker ------------------------------------------------------------------
    @property
    def current_class(self) -> int:
        """Class id (1..17) of the picker."""
        return class_id(self.vertebra.value)

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
            self.shapes.current_face_color = _hex_rgba(class_colour(cid), FACE_ALPHA)

    def next_class(self, step: int = 1) -> None:
        """Move the picker ``step`` vertebrae down the spine (negative: up), clamped."""
        i = min(len(VERTEBRAE) - 1, max(0, VERTEBRAE.index(self.vertebra.value) + step))
        self.vertebra.value = VERTEBRAE[i]

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
        nxt = next_missing(present, self.current_class + step, step)
        if nxt is not None:
            self.vertebra.value = class_name(nxt)

    def pick_first_missing(self) -> None:
        """Move the picker to the first vertebra not yet drawn, from the picker on in the
        chosen direction (then the other way); stays when all are drawn."""
        step = -1 if self.direction.value == DIRECTIONS[1] else 1
        nxt = next_missing([a.class_id for a in self.annotations()], self.current_class, step)
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
                layer.features = _typed(layer.features.iloc[: len(layer.data)])

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
            layer.features = _typed(feats.iloc[: len(layer.data)])
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
            edges.append(_hex_rgba(c))
            faces.append(_hex_rgba(c, FACE_ALPHA))
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
                layer.features = _typed(pd.DataFrame(rows, columns=list(_COLUMNS)))
            else:  # napari keeps the old rows when the data is emptied
                layer.features = _empty_features()
        self._n_shapes = len(layer.data)
        self._next_instance = len(annotations) + 1
        self._restyle()
        self._update_defaults()
        self._after_change(save=save, label=label)

    def _load_saved(self, key: str) -> None:
        if self.project is None or self.shapes is None:
            return
        try:
            saved = self.project.load(key)
        except ValueError as e:
            self.fail(f"Annotate: {error_message(e)}")
            return
        if saved:
            self.set_annotations(saved, save=False)
            self.status.set(f"loaded {len(saved)} vertebrae of {key} from the project", "ok")
        self._show_history()

    def _after_change(self, save: bool = True, label: str = "edit") -> None:
        anns, msgs = shapes_to_annotations(self.shapes) if self.shapes is not None else ([], [])
        shape = None
        if self._mip is not None:
            shape = tuple(np.asarray(self._mip.data).shape[-2:])
        msgs = list(msgs or []) + check_image_annotations(anns or [], shape)
        self._show_warnings(msgs)
        if not save or not self.save(label=label):
            self._show_history()

    def _show_warnings(self, msgs: list[str]) -> None:
        self.warnings = msgs
        self.warnings_list.clear()
        for m in msgs:
            item = QListWidgetItem(f"⚠ {m}")
            self.warnings_list.addItem(item)
        if not msgs:
            self.warnings_list.addItem(QListWidgetItem("no problems found"))
        new = [m for m in msgs if m not in self._notified]
        if new:
            notify("Vertebra annotations: " + "; ".join(new), "warning")
        self._notified = set(msgs)

    def save(self, explicit: bool = False, label: str = "edit") -> bool:
        """Save the current polygons (and the MIP, once) to the project, as one step of
        its history named ``label`` (none when nothing changed); True on success.

        The files are written on a background thread; the MIP's PNG (once) is not."""
        if self.shapes is None or self._mip is None:
            return False
        if self.project is None and not self._open_project():
            return False
        key = self.image_key.value or self.key_for(self._mip)
        try:
            if key not in self.project:
                self.project.add_image(
                    key,
                    np.asarray(self._mip.data, np.float32),
                    scan=self.scan_for(self._mip),
                    meta={"layer": self._mip.name},
                )
                self._refresh_project_images()
            anns = self.annotations()
            self.project.save(key, anns, label=label)
            if explicit:
                self.project.flush()
        except (ValueError, OSError) as e:
            self.fail(f"Could not save annotations: {error_message(e)}")
            return False
        self.n_saves += 1
        stamp = time.strftime("%H:%M:%S")
        self.autosave_label.value = (
            f"autosaved {stamp} · {len(anns)} vertebrae in {self.project.folder.name}"
        )
        if explicit:
            self.status.set(f"saved {len(anns)} vertebrae to {self.project.folder}", "ok")
        else:
            self.status.set(f"autosaved {stamp}: {label}", "ok")
        self._show_history()
        return True

    # -- history -------------------------------------------------------------------------
    def _history(self) -> Any:
        key = self.image_key.value
        if self.project is None or not key or self._mip is None:
            return None
        try:
            return self.project.history(key)
        except (ValueError, OSError):
            return None

    def _show_history(self) -> None:
        """The last changes (newest first, undone ones greyed) and the buttons' state."""
        hist = self._history()
        self.history_list.clear()
        steps = hist.steps if hist is not None else []
        cursor = hist.cursor if hist is not None else -1
        first = max(0, len(steps) - _HISTORY_SHOWN)
        for i in range(len(steps) - 1, first - 1, -1):
            st = steps[i]
            mark = "▶ " if i == cursor else "   "
            what = "opened" if i == 0 and st["label"] == "start" else st["label"]
            item = QListWidgetItem(f"{mark}{st.get('time', '')}  {what}")
            if i > cursor:
                item.setForeground(QColor("#888888"))
            self.history_list.addItem(item)
        if not steps:
            self.history_list.addItem(QListWidgetItem("no changes yet"))
        can_undo = hist is not None and hist.can_undo
        can_redo = hist is not None and hist.can_redo
        self.undo_button.enabled = can_undo
        self.redo_button.enabled = can_redo
        self.undo_button.tooltip = f"Undo: {hist.undo_label}" if can_undo else "Nothing to undo"
        self.redo_button.tooltip = f"Redo: {hist.redo_label}" if can_redo else "Nothing to redo"

    def undo(self) -> bool:
        """Take back the last change of this MIP (also one made before a restart)."""
        return self._undo_redo(redo=False)

    def redo(self) -> bool:
        """Bring back the last undone change."""
        return self._undo_redo(redo=True)

    def _undo_redo(self, redo: bool) -> bool:
        hist = self._history()
        if self.shapes is None or hist is None:
            self.status.set("nothing to undo: choose a MIP image first", "warning")
            return False
        if getattr(self.shapes, "_is_creating", False):
            self.cancel_drawing()  # a polygon half drawn is dropped first
        what = hist.redo_label if redo else hist.undo_label
        key = self.image_key.value
        try:
            anns = self.project.redo(key) if redo else self.project.undo(key)
        except (ValueError, OSError) as e:
            self.fail(f"{'Redo' if redo else 'Undo'}: {error_message(e)}")
            return False
        if anns is None:
            self.status.set(f"nothing to {'redo' if redo else 'undo'}", "info")
            self._show_history()
            return False
        self.set_annotations(anns, save=False)
        self._show_history()
        self.status.set(f"{'redid' if redo else 'undid'}: {what}", "ok")
        return True

    def shift_levels(self, step: int) -> bool:
        """Move every label of this MIP ``step`` levels (-1 up, +1 down): one undoable
        step; refused with a message when a label would leave T1..L5."""
        if self.shapes is None:
            self.fail("Shift levels: choose a MIP image first")
            return False
        if getattr(self.shapes, "_is_creating", False):
            self.cancel_drawing()
        anns = self.annotations()
        if not anns:
            self.status.set("Shift levels: no polygons on this MIP", "warning")
            return False
        try:
            moved = shift_levels(anns, step)
        except ValueError as e:
            self.fail(f"Shift levels: {e}")
            return False
        way = "up" if step < 0 else "down"
        self.set_annotations(moved, label=f"shift levels {way}")
        self.status.set(
            f"shifted {len(moved)} labels {way} ({anns[0].name} → {moved[0].name}); Ctrl+Z undoes",
            "ok",
        )
        return True

    # -- conversions ---------------------------------------------------------------------
    def mask_to_polygons(self) -> None:
        """Outline the chosen 2D Labels layer (class ids) as polygons (replacing them)."""
        layer = self.mask_layer.value
        if layer is None:
            self.fail("Mask → polygons: choose a 2D labels layer of class ids (1..17)")
            return
        try:
            anns = label_image_to_annotations(np.asarray(layer.data))
            self.set_annotations(anns, label="mask → polygons")
        except ValueError as e:
            self.fail(f"Mask → polygons: {error_message(e)}")
            return
        self.status.set(f"{len(anns)} vertebrae outlined from {layer.name}", "ok")

    def polygons_to_mask(self) -> Any:
        """Paint the polygons into a Labels layer "mask <mip>" (class ids); returns it."""
        if self.shapes is None or self._mip is None:
            self.fail("Polygons → mask: choose a MIP image first")
            return None
        shape = np.asarray(self._mip.data).shape[-2:]
        img = annotations_to_label_image(self.annotations(), shape)
        layer, _ = upsert_layer(
            self.viewer,
            f"mask {self._mip.name}",
            img,
            "Labels",
            colormap=class_label_colormap(),
            features=class_label_features(),
            opacity=0.5,
            scale=tuple(self._mip.scale),
            translate=tuple(self._mip.translate),
        )
        self.status.set(f"mask of {len(self.annotations())} vertebrae in {layer.name}", "ok")
        return layer

    def labels_from_3d(self) -> bool:
        """Fill the polygons from a 3D label map (worker thread); False if it cannot start.

        With a MIP from "Preprocess CT" run with labels, its result is used directly;
        otherwise the CT and 3D labels pickers are run through the pipeline.
        """
        from napari_vertebra.annotation.from3d import labels_to_annotations

        from .preprocess import result_for_layer

        mip = self.mip_layer.value
        result = result_for_layer(mip) if mip is not None else None
        scan = self.scan_for(mip) if mip is not None else "scan"
        if result is not None and result.labels_cropped is not None:
            identity = {i: i for i in range(1, len(VERTEBRAE) + 1)}
            work = partial(
                labels_to_annotations,
                result.source,
                result.labels_source,
                identity,
                params=result.params,
                result=result,
                min_visible=float(self.min_visible.value),
                scan=scan,
            )
            return self.runner.start(
                work,
                on_done=partial(self._on_from3d, None),
                description="Labels from 3D",
            )
        ct_layer, lab_layer = self.ct_layer.value, self.labels3d_layer.value
        if ct_layer is None or lab_layer is None:
            self.fail(
                "Labels from 3D: run Preprocess CT with a labels layer, or choose a CT and "
                "its 3D labels here"
            )
            return False
        try:
            from ._layers import volume_from_layer
            from .preprocess import guess_convention

            ct = volume_from_layer(ct_layer)
            arr = np.asarray(lab_layer.data)
            if arr.shape != ct.shape:
                raise ValueError(f"labels {lab_layer.name!r} {arr.shape} vs CT {ct.shape}")
            labels = ct.with_array(arr)
            conv = self.labels_convention.value
            if conv == "auto":
                conv = (lab_layer.metadata or {}).get("convention") or guess_convention(arr)
            if conv in ("class ids", "class_ids"):
                conv = {i: i for i in range(1, len(VERTEBRAE) + 1)}
        except ValueError as e:
            self.fail(f"Labels from 3D: {error_message(e)}")
            return False
        work = partial(
            labels_to_annotations,
            ct,
            labels,
            conv,
            min_visible=float(self.min_visible.value),
            scan=safe_key(ct_layer.name),
        )
        return self.runner.start(
            work, on_done=partial(self._on_from3d, ct_layer.name), description="Labels from 3D"
        )

    def _on_from3d(self, ct_name: str | None, image: AnnotatedImage) -> None:
        if ct_name is not None:  # a new MIP: show it and annotate it
            mip, _ = upsert_layer(
                self.viewer,
                f"MIP {ct_name}",
                image.image,
                "Image",
                colormap="gray",
                contrast_limits=(0.0, 1500.0),
                metadata={"mip_of": ct_name, "crop_box": image.meta.get("crop_box")},
            )
            self.refresh_choices()
            self.mip_layer.value = mip
        elif self._mip is not None and tuple(np.asarray(self._mip.data).shape) != (
            image.height,
            image.width,
        ):
            raise ValueError("the labels' MIP does not match the chosen MIP image")
        self.set_annotations(image.annotations, label="labels from 3D")
        self.pick_first_missing()
        dropped = image.meta.get("dropped") or []
        msg = f"{len(image.annotations)} vertebrae from the 3D labels"
        if dropped:
            msg += f" (dropped as cut off: {', '.join(dropped)})"
        self.status.set(msg, "ok")

    # -- files -------------------------------------------------------------------------
    def _ask_path(self, title: str, save: bool, filt: str, directory: bool = False) -> str:
        if directory:
            return QFileDialog.getExistingDirectory(self, title, str(self.project_dir.value))
        fn = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
        path, _ = fn(self, title, str(self.project_dir.value), filt)
        return path

    def import_annotations(self, path: str | os.PathLike | None = None) -> int:
        """Import a COCO or VIA JSON; returns the number of images taken in.

        The image whose key or size matches the current MIP fills the polygons; other
        images with pixels are added to the project.
        """
        if path is None:
            path = self._ask_path("Import annotations", False, "JSON (*.json)")
            if not path:
                return 0
        from napari_vertebra.annotation.convert import read_annotations

        try:
            _, images = read_annotations(path, load_images=True)
        except (ValueError, OSError) as e:  # malformed files: one message, no traceback
            self.fail(f"Import: {error_message(e)}")
            return 0
        repaired = [w for im in images for w in im.warnings]
        if repaired:  # e.g. polygons clipped to the image: say so
            notify(f"Import {Path(path).name}: " + "; ".join(repaired), "warning")
        key = self.image_key.value
        shape = tuple(np.asarray(self._mip.data).shape[-2:]) if self._mip is not None else None
        match = None
        for im in images:
            if safe_key(Path(im.file_name).stem) == key:
                match = im
        if match is None and len(images) == 1 and (images[0].height, images[0].width) == shape:
            match = images[0]
        stored = 0
        for im in images:
            if im is match or im.image is None or self.project is None:
                continue
            k = safe_key(Path(im.file_name).stem)
            try:
                self.project.add_image(k, im.image, scan=im.scan)
                self.project.save(k, im.annotations, label=f"import {Path(path).name}")
                stored += 1
            except (ValueError, OSError) as e:
                notify(f"Import: {k}: {error_message(e)}", "warning")
        self._refresh_project_images()
        if match is not None and self.shapes is not None:
            self.set_annotations(match.annotations, label=f"import {Path(path).name}")
        msg = f"imported {Path(path).name}: {len(images)} image(s)"
        msg += "; current MIP filled" if match is not None else "; none matches the current MIP"
        if stored:
            msg += f"; {stored} added to the project"
        self.status.set(msg, "ok")
        return len(images)

    def _export_images(self) -> list[AnnotatedImage]:
        """The project's images with pixels, polygons of fewer than 3 points left out."""
        self.save()
        if self.project is None:
            raise ValueError("no project folder")
        images = self.project.images(load_pixels=True)
        skipped = 0
        for im in images:
            kept = []
            for a in im.annotations:
                polys = [p for p in a.polygons if len(p) >= 3]
                skipped += len(a.polygons) - len(polys)
                if polys:
                    kept.append(VertebraAnnotation(a.class_id, polys, a.score))
            im.annotations = kept
        if skipped:
            notify(f"export: left out {skipped} polygon(s) with fewer than 3 points", "warning")
        return images

    def export_coco(self, out_dir: str | os.PathLike | None = None) -> Path | None:
        """Write the whole project as COCO into ``out_dir``; returns the JSON path."""
        if out_dir is None:
            out_dir = self._ask_path("Export COCO to folder", True, "", directory=True)
            if not out_dir:
                return None
        from napari_vertebra.annotation.coco import write_coco

        try:
            path = write_coco(self._export_images(), out_dir)
        except (ValueError, OSError) as e:
            self.fail(f"Export COCO: {error_message(e)}")
            return None
        self.status.set(f"COCO written: {path}", "ok")
        return path

    def export_via(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write the whole project as a VIA 2 project JSON (images beside it)."""
        if path is None:
            path = self._ask_path("Export VIA project", True, "JSON (*.json)")
            if not path:
                return None
        from napari_vertebra.annotation.via import write_via

        try:
            out = write_via(self._export_images(), path)
        except (ValueError, OSError) as e:
            self.fail(f"Export VIA: {error_message(e)}")
            return None
        self.status.set(f"VIA written: {out}", "ok")
        return Path(out)

    def open_project_image(self, key: str | None = None) -> Any:
        """Add a stored MIP of the project as a layer and load its polygons; returns it."""
        key = key or self.project_images.value
        if not key or self.project is None:
            self.fail("Open: no project image chosen")
            return None
        try:
            im = self.project.image(key, load_pixels=True)
        except (KeyError, ValueError, OSError) as e:
            self.fail(f"Open: {error_message(e)}")
            return None
        layer = find_layer(self.viewer, f"MIP {key}", "Image")
        if layer is None:
            layer = self.viewer.add_image(
                im.image,
                name=f"MIP {key}",
                colormap="gray",
                contrast_limits=(0.0, 1500.0),
                metadata={"project_key": key},
            )
        self.refresh_choices()
        self.mip_layer.value = layer
        return layer


#: Feature columns of the vertebra Shapes layer.
_COLUMNS = ("class_id", "vertebra", "instance", "score", "source")
_HAS_SOURCE = "source" in {f.name for f in dataclasses.fields(VertebraAnnotation)}


def _empty_features() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: [] for c in _COLUMNS}))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Features with plain dtypes: class_id / instance int (0 = unknown), vertebra str,
    score float (NaN = none), source str ("hand" when unknown)."""
    n = len(df)
    cid = pd.to_numeric(df["class_id"], errors="coerce").fillna(0).astype(int).to_numpy()
    names = [class_name(c) if 1 <= c <= len(VERTEBRAE) else "?" for c in cid]
    inst = pd.to_numeric(df["instance"], errors="coerce").fillna(0).astype(int).to_numpy()
    score = (
        pd.to_numeric(df["score"], errors="coerce").to_numpy(dtype=float)
        if "score" in df
        else np.full(n, np.nan)
    )
    source = (
        [v if isinstance(v, str) and v else "hand" for v in df["source"]]
        if "source" in df
        else ["hand"] * n
    )
    return pd.DataFrame(
        {
            "class_id": cid,
            "vertebra": np.asarray(names, dtype=object),
            "instance": inst,
            "score": score,
            "source": np.asarray(source, dtype=object),
        }
    )


def _pick_key(widget: AnnotateWidget, key: str) -> Any:
    return lambda _layer: widget.pick_number(key)
