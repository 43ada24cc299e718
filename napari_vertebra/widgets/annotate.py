"""The "Annotate vertebrae" dock widget: class polygons on a sagittal MIP, autosaved.

Each MIP Image layer gets a Shapes layer "vertebrae <mip>" whose shapes carry the
features ``class_id`` (1..17), ``vertebra`` ("T1".."L5") and ``instance`` (shapes that
share it are parts of one vertebra; see :mod:`._shapes`). A newly drawn polygon takes
the class of the picker, which then moves to the next vertebra not yet drawn. Every
change is checked (warnings list) and saved at once to the viewer's annotation session
(:class:`~napari_vertebra.annotation.session.AnnotationSession`: an
:class:`~napari_vertebra.annotation.project.AnnotationProject` folder written on a
background thread), as one step of the MIP's undo history (Ctrl+Z / Ctrl+Shift+Z, kept
in the project, so it survives a restart); selecting a MIP whose key is in the project
loads its polygons. Escape cancels the polygon being drawn; a polygon of fewer than 3
points is refused with a message.

The widget publishes its polygons layer in the viewer's :class:`~._session.Session`
and follows its requests (show a MIP's polygons, replace them: 'Review predictions').
The class is split in mixins: drawing (:mod:`._annotate_drawing`), saving and history
(:mod:`._annotate_saving`), conversions and files (:mod:`._annotate_files`), which MIP
shows (:mod:`._annotate_view`: only the chosen one, with its polygons) and following a
re-run of 'Preprocess CT' (:mod:`._annotate_rerun`: the polygons move with the anatomy
onto the new MIP, saved under its own key).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, Label, LineEdit
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QListWidget

from napari_vertebra.annotation.history import MAX_STEPS
from napari_vertebra.annotation.project import AnnotationProject, safe_key
from napari_vertebra.annotation.session import default_project_dir
from napari_vertebra.core.labels import CLASS_SETS, LABEL_CONVENTIONS, VERTEBRAE

from ._annotate_drawing import BOUND_KEYS, DIRECTIONS, NUMBER_KEYS, AnnotateDrawing
from ._annotate_files import AnnotateFiles
from ._annotate_outline import AnnotateOutline
from ._annotate_rerun import AnnotateRerun
from ._annotate_saving import AnnotateSaving
from ._annotate_view import AnnotateView
from ._base import VertebraWidget, layer_combo
from ._layers import find_layer, same_layer
from ._session import Polygons
from ._shapes import empty_features
from ._status import error_message, notify

if TYPE_CHECKING:  # napari passes the viewer to a parameter annotated like this
    import napari.viewer

__all__ = ["SHORTCUTS", "AnnotateWidget"]

SHORTCUTS = (
    "<b>Shortcuts</b> (Shapes layer selected): "
    "<b>P</b> draw polygon (click vertices, Enter / double-click ends, "
    "<b>Esc</b> cancels) · "
    "<b>O</b> outline mode: click inside a vertebra to outline it (O again ends) · "
    "<b>.</b> / <b>,</b> next / previous vertebra · "
    "<b>1</b>..<b>5</b> L1..L5 (lumbar), <b>1</b>..<b>9 0 - =</b> T1..T12 (thoracic) · "
    "<b>Shift+C</b> give selected shapes the picked class · "
    "<b>D</b> edit vertices · <b>S</b> select · <b>Delete</b> delete selected · "
    "<b>Ctrl+Z</b> / <b>Ctrl+Shift+Z</b> undo / redo "
    f"(last {MAX_STEPS} changes per MIP, kept in the project) · "
    "<b>Shift+S</b> save now (every change is autosaved)"
)


class AnnotateWidget(
    AnnotateDrawing,
    AnnotateOutline,
    AnnotateSaving,
    AnnotateFiles,
    AnnotateView,
    AnnotateRerun,
    VertebraWidget,
):
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
        self.shapes: Any = None
        self.warnings: list[str] = []
        self.n_saves = 0
        self._suspend = 0
        self._n_shapes = 0
        self._next_instance = 1
        self._mip: Any = None
        self._notified: set[str] = set()
        self._add_project_rows(project_dir)
        self._add_class_rows()
        self._add_history_rows()
        self._add_conversion_rows()
        self._add_checks()
        self.add_status()
        self.mip_layer.changed.connect(self._on_mip_changed)
        self.project_dir.changed.connect(self._on_project_dir_changed)
        self.image_key.changed.connect(self._on_key_edited)
        self.vertebra.changed.connect(self._on_class_changed)
        self.class_set.changed.connect(self._on_class_set_changed)
        self._listen(self.session.annotate_requested, self._on_annotate_requested)
        self._listen(self.session.annotations_replaced, self._on_annotations_replaced)
        self._listen(self.session.result_changed, self._on_result_changed)
        self._viewer_keys_bound = False
        self._bind_viewer_keys()
        self._open_project(quiet=True)
        self.refresh_choices()
        self._on_class_changed()
        self._on_mip_changed()

    # -- building ------------------------------------------------------------------------
    def _add_project_rows(self, project_dir: str | None) -> None:
        """The MIP picker, the project folder, the image key and the project's images."""
        is2d = lambda layer: layer.ndim == 2 and not getattr(layer, "rgb", False)  # noqa: E731
        self.mip_layer = layer_combo(self.viewer, "Image", "MIP image", predicate=is2d)
        self.project_dir = FileEdit(
            mode="d", value=str(project_dir or default_project_dir()), label="project folder"
        )
        self.project_dir.tooltip = "Annotations are saved here after every change."
        self.image_key = LineEdit(value="", label="image key")
        self.image_key.tooltip = "Name of this MIP in the project (a safe file name)."
        self.project_images = ComboBox(choices=self._project_keys, label="project images")
        self.add_form(self.mip_layer, self.project_dir, self.image_key, self.project_images)
        self.open_button = self.button("Open project image", self.open_project_image)
        self.add_buttons(self.open_button)

    def _add_class_rows(self) -> None:
        """The class set and vertebra pickers, then drawing and assigning."""
        self.class_set = ComboBox(value="paper", choices=list(CLASS_SETS), label="classes")
        self.class_set.tooltip = (
            "paper: T1..L5 (the paper's 17 classes). extended: also C7, T13, L6 and the\n"
            "sacrum (S1), the landmarks that name a partial view (docs/levels.md).\n"
            "Switches to extended by itself when the MIP holds one of those levels."
        )
        self.vertebra = ComboBox(value="L1", choices=list(VERTEBRAE), label="vertebra")
        self.swatch = Label(value="")
        self.direction = ComboBox(value=DIRECTIONS[0], choices=list(DIRECTIONS), label="then")
        self.add_form(self.class_set, self.vertebra, self.swatch, self.direction)
        self.draw_button = self.button("Draw polygon (P)", self.draw_polygon)
        self.assign_button = self.button("Set class (Shift+C)", self.assign_class_to_selected)
        self.delete_button = self.button("Delete selected", self.delete_selected)
        self.add_buttons(self.draw_button, self.assign_button, self.delete_button)

    def _add_history_rows(self) -> None:
        """Undo / redo, shifting every level, the history list and the autosave line."""
        self.undo_button = self.button("Undo (Ctrl+Z)", self.undo)
        self.redo_button = self.button("Redo (Ctrl+Shift+Z)", self.redo)
        self.add_buttons(self.undo_button, self.redo_button)
        self.shift_up_button = self.button(
            "Shift levels up ↑", partial(self.shift_levels, -1),
            "Every label of this MIP one level up (L2 → L1).",
        )  # fmt: skip
        self.shift_down_button = self.button(
            "Shift levels down ↓", partial(self.shift_levels, 1),
            "Every label of this MIP one level down (L1 → L2).",
        )  # fmt: skip
        self.add_buttons(self.shift_up_button, self.shift_down_button)
        self.history_list = QListWidget()
        self.history_list.setMaximumHeight(92)
        self.history_list.setToolTip("Changes of this MIP, newest first (greyed: undone)")
        self.add(self.history_list)
        self.autosave_label = Label(value="not saved yet")
        self.autosave_label.native.setWordWrap(True)  # undo / redo name the step
        self.add(self.autosave_label)

    def _add_conversion_rows(self) -> None:
        """Labels from 3D, mask <-> polygons, COCO / VIA import and export."""
        is3d, is2d = (lambda la: la.ndim == 3), (lambda la: la.ndim == 2)
        combo = partial(layer_combo, self.viewer, nullable=True)
        self.ct_layer = combo("Image", "CT (3D)", predicate=is3d)
        self.labels3d_layer = combo("Labels", "3D labels", predicate=is3d)
        self.labels_convention = ComboBox(
            value="auto", choices=list(LABEL_CONVENTIONS), label="label ids"
        )
        self.min_visible = FloatSpinBox(
            value=0.5, min=0.0, max=1.0, step=0.05, label="min visible"
        )
        self.min_visible.tooltip = "Drop vertebrae less visible than this fraction (cut ones)."
        self.mask_layer = combo("Labels", "2D mask", predicate=is2d)
        self.add_form(
            self.ct_layer, self.labels3d_layer, self.labels_convention, self.min_visible,
            self.mask_layer,
        )  # fmt: skip
        self.from3d_button = self.button("Labels from 3D", self.labels_from_3d)
        self.mask_to_poly_button = self.button("Mask → polygons", self.mask_to_polygons)
        self.poly_to_mask_button = self.button("Polygons → mask", self.polygons_to_mask)
        self.add_buttons(self.from3d_button, self.mask_to_poly_button, self.poly_to_mask_button)
        self.import_button = self.button("Import COCO/VIA…", self.import_annotations)
        self.export_coco_button = self.button("Export COCO…", self.export_coco)
        self.export_via_button = self.button("Export VIA…", self.export_via)
        self.add_buttons(self.import_button, self.export_coco_button, self.export_via_button)

    def _add_checks(self) -> None:
        """The checks' warnings list and the shortcuts."""
        self.add(Label(value="<b>Checks</b>"))
        self.warnings_list = QListWidget()
        self.warnings_list.setMaximumHeight(110)
        self.add(self.warnings_list)
        self.help_label = Label(value=SHORTCUTS)
        self.help_label.native.setWordWrap(True)
        self.add(self.help_label)

    # -- project -----------------------------------------------------------------------
    @property
    def project(self) -> AnnotationProject | None:
        """The open annotation project (the viewer session's), or None."""
        return self.session.annotation.project

    def _open_project(self, quiet: bool = False) -> bool:
        folder = Path(str(self.project_dir.value)).expanduser()
        try:
            self.session.annotation.open(folder)
        except (ValueError, OSError) as e:
            if self.project is None:  # the new folder cannot be a project
                if not quiet:
                    self.fail(f"Project: {error_message(e)}")
                return False
            self.fail(f"Could not save annotations: {error_message(e)}")  # the old one's
        self.notify_project_repairs()
        self._refresh_project_images()
        return True

    def _project_keys(self, *_: Any) -> list[str]:
        return self.session.annotation.list_images()

    def _refresh_project_images(self) -> None:
        try:
            self.project_images.reset_choices()
        except RuntimeError:  # the widget was deleted
            return

    def _on_project_dir_changed(self, *_: Any) -> None:
        had = self.annotations() if self.shapes is not None else []
        if not self._open_project():
            return
        key = self.image_key.value
        if key and self._has_saved(key):
            self._load_saved(key)
        elif had:
            self.save()  # carry the current polygons into the new project
        self.status.set(f"project: {self.project.folder if self.project else '-'}", "info")

    # -- MIP selection -----------------------------------------------------------------
    def key_for(self, layer: Any, avoid: str = "") -> str:
        """The project key of a MIP layer (metadata, stored name, or scan + shape; never
        one the project holds for another image, nor ``avoid``)."""
        shape = np.asarray(layer.data).shape[-2:]
        return self.session.annotation.key_for(layer.name, layer.metadata, shape, avoid)

    def scan_for(self, layer: Any) -> str:
        """The scan (patient) name of a MIP layer: its CT's file name or its name."""
        return self.session.annotation.scan_for(layer.name, layer.metadata)

    def _on_layers_changed(self, event: Any = None) -> None:
        super()._on_layers_changed(event)
        kind = getattr(event, "type", "")
        if kind == "removed" and same_layer(getattr(event, "value", None), self.shapes):
            # the polygons stay saved; choosing the MIP again brings them back
            self._detach_shapes()
            self.shapes, self._mip = None, None
            self._publish()
            return
        added = getattr(event, "value", None) if kind == "inserted" else None
        if added is not None and not same_layer(added, self.shapes) and added.ndim == 2:
            QTimer.singleShot(0, self._keep_shapes_on_top)

    def _on_mip_changed(self, *_: Any) -> None:
        layer = self.mip_layer.value
        if (
            same_layer(layer, self._mip)
            and self.shapes is not None
            and self.shapes in self.viewer.layers
        ):
            return
        before, before_shapes = self._mip, self.shapes
        self._mip = layer
        if layer is None:
            if self.shapes is not None:
                self._detach_shapes()
            self.shapes = None
            self._publish()
            return
        key = self.key_for(layer)
        with self.image_key.changed.blocked():
            self.image_key.value = key
        self._attach_shapes(layer)
        self._show_chosen(layer, before, before_shapes)
        self._publish()
        if len(self.shapes.data) == 0:
            self._load_saved(key)
        self._after_change(save=False)
        self._check_mip(layer)

    def _on_key_edited(self, *_: Any) -> None:
        layer = self.mip_layer.value
        key = safe_key(self.image_key.value) if self.image_key.value else ""
        if layer is None or not key:
            return
        layer.metadata["project_key"] = key
        self._publish()
        if self._has_saved(key):
            self._load_saved(key)
        else:
            self.save()

    def shapes_name(self, mip_layer: Any) -> str:
        """The name of the polygons layer of ``mip_layer``."""
        return f"vertebrae {mip_layer.name}"

    # -- the session ---------------------------------------------------------------------
    def _publish(self) -> None:
        """Tell the session which polygons are on screen (None: none)."""
        shown = None
        if self.shapes is not None and self._mip is not None:
            shown = Polygons(self._mip, self.shapes, self.image_key.value)
        self.session.publish_polygons(shown)

    def _on_annotate_requested(self, mip: Any) -> None:
        """Session: show the polygons of ``mip`` (e.g. for 'Review predictions')."""
        if same_layer(mip, self._mip) and self.shapes is not None:
            return
        self.refresh_choices()
        self.mip_layer.value = mip

    def _on_annotations_replaced(self, annotations: list, label: str) -> None:
        """Session: replace the polygons on screen (one undoable, autosaved step)."""
        if self.shapes is None:
            self.fail("Annotate: no polygons layer to put the annotations in")
            return
        self.set_annotations(annotations, label=label)

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
                    features=empty_features(),
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
            self._install_outline(layer)
        self._n_shapes = len(layer.data)
        inst = layer.features["instance"] if "instance" in layer.features else []
        self._next_instance = int(np.max(inst)) + 1 if len(inst) else 1
        self._update_defaults()

    def _detach_shapes(self) -> None:
        self._uninstall_outline()
        try:
            self.shapes.events.data.disconnect(self._on_shapes_data)
            for key in (*BOUND_KEYS, *NUMBER_KEYS):
                self.shapes.bind_key(key, None, overwrite=True)
        except (RuntimeError, TypeError, ValueError, KeyError) as e:  # a layer half gone
            notify(f"Annotate: the polygons layer could not be released cleanly ({e})")

    def close_widget(self) -> None:
        """Unbind the keys, write every pending save and leave the session."""
        if self.shapes is not None:
            self._detach_shapes()
            if self.session.polygons is not None and same_layer(
                self.session.polygons.layer, self.shapes
            ):
                self.session.publish_polygons(None)
        self._bind_viewer_keys(False)
        try:
            self.session.annotation.close()  # every pending save reaches the disk
        except OSError as e:
            notify(f"Could not save annotations: {error_message(e)}", "error")
        super().close_widget()
