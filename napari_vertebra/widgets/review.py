"""The "Review predictions" widget: accept, reject or fix predicted vertebrae.

It reads the prediction shown by 'Predict vertebrae' and lists its vertebrae in a table
(class, score, state: pending / accepted / rejected / fixed, and with a ground truth the
Dice per vertebra). Accepted and fixed vertebrae become polygons of the open annotation
project ('Annotate vertebrae': its Shapes layer, autosaved), replacing a polygon of the
same class, so the annotator edits instead of drawing. "Fix" adds the polygon with the
class of the picker, selects it and switches the Shapes layer to vertex editing.

Keyboard shortcuts (bound on the viewer while the widget is shown): A accept, R reject,
F fix, N next pending vertebra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Label, PushButton
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from napari_vertebra.annotation.polygons import (
    annotations_to_label_image,
    dice,
    mask_to_polygons,
)
from napari_vertebra.annotation.types import VertebraAnnotation
from napari_vertebra.core.labels import VERTEBRAE, class_colour, class_id, class_name

from ._base import VertebraWidget
from .predict import find_dock_widget, register_widget

if TYPE_CHECKING:  # napari passes the viewer to a parameter annotated like this
    import napari.viewer

__all__ = ["COLUMNS", "SHORTCUTS", "STATES", "ReviewWidget"]

STATES = ("pending", "accepted", "rejected", "fixed")
COLUMNS = ("vertebra", "score", "state", "Dice")
#: key -> (method name, description)
SHORTCUTS = {
    "a": ("accept", "accept"),
    "r": ("reject", "reject"),
    "f": ("fix", "fix (add for editing)"),
    "n": ("next", "next pending"),
}
_STATE_COLOURS = {
    "pending": "#c8c8c8",
    "accepted": "#7bd88f",
    "rejected": "#ff6b6b",
    "fixed": "#8ab4f8",
}
GT_NONE = "none"
GT_PROJECT = "project polygons"


class ReviewWidget(VertebraWidget):
    """Review the vertebrae predicted by 'Predict vertebrae'.

    Attributes: ``table`` (QTableWidget, one row per vertebra), ``states`` (list of
    "pending" / "accepted" / "rejected" / "fixed"), ``dice`` (list of float or None),
    ``ground_truth`` (picker: none, the project's polygons of the MIP, or a 2D Labels
    layer of class ids), ``fix_class`` (class given by Fix), buttons ``*_button``.
    Handlers: :meth:`refresh`, :meth:`accept`, :meth:`accept_all`, :meth:`reject`,
    :meth:`fix`, :meth:`next`, :meth:`select`, :meth:`bind_shortcuts`.
    """

    #: Emitted after a vertebra's state changed (row, state).
    reviewed = Signal(int, str)

    def __init__(self, viewer: napari.viewer.Viewer, parent: Any = None) -> None:
        super().__init__(viewer, parent)
        register_widget(viewer, self)
        self.prediction: Any = None
        self.image_name = ""
        self.states: list[str] = []
        self.dice: list[float | None] = []
        self._added: dict[int, VertebraAnnotation] = {}
        self._gt_image: np.ndarray | None = None
        self._project_snapshot: list[VertebraAnnotation] = []
        self._source: Any = None
        self._bound: dict[str, Any] = {}

        self.ground_truth = ComboBox(label="ground truth", choices=self._gt_choices)
        self.ground_truth.tooltip = (
            "Compare with: the project's polygons of this MIP (as saved before the review\n"
            "started) or a 2D Labels layer of class ids (e.g. 'MIP labels <ct>')"
        )
        self.fix_class = ComboBox(label="fix as", choices=list(VERTEBRAE), value="L1")
        self.fix_class.tooltip = (
            "Class given to the vertebra by Fix (the predicted one by default)"
        )
        self.add_form(self.ground_truth, self.fix_class)
        self._combos.append(self.ground_truth)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(200)
        self.add(self.table, stretch=1)

        self.accept_button = PushButton(text="Accept (A)")
        self.reject_button = PushButton(text="Reject (R)")
        self.fix_button = PushButton(text="Fix (F)")
        self.add_buttons(self.accept_button, self.reject_button, self.fix_button)
        self.accept_all_button = PushButton(text="Accept all pending")
        self.next_button = PushButton(text="Next (N)")
        self.refresh_button = PushButton(text="Reload prediction")
        self.add_buttons(self.accept_all_button, self.next_button, self.refresh_button)
        self.accept_button.tooltip = "The vertebra becomes a polygon of the project"
        self.reject_button.tooltip = "Drop it (and its polygon if it was accepted)"
        self.fix_button.tooltip = (
            "Add it as a polygon of the 'fix as' class and edit its vertices (D: direct select)"
        )
        self.summary = Label(value="")
        self.summary.native.setWordWrap(True)
        self.add(self.summary)
        keys = " · ".join(f"<b>{k.upper()}</b> {d}" for k, (_, d) in SHORTCUTS.items())
        self.help_label = Label(value=f"<b>Shortcuts</b> (viewer, while this is shown): {keys}")
        self.help_label.native.setWordWrap(True)
        self.add(self.help_label)
        self.add_status()

        self.accept_button.changed.connect(lambda *_: self.accept())
        self.reject_button.changed.connect(lambda *_: self.reject())
        self.fix_button.changed.connect(lambda *_: self.fix())
        self.accept_all_button.changed.connect(lambda *_: self.accept_all())
        self.next_button.changed.connect(lambda *_: self.next())
        self.refresh_button.changed.connect(lambda *_: self.refresh())
        self.ground_truth.changed.connect(lambda *_: self._on_gt_changed())
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.refresh_choices()
        self.connect_predict()

    # ----------------------------------------------------------------- sources
    def _gt_choices(self, *_: Any) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [(GT_NONE, GT_NONE), (GT_PROJECT, GT_PROJECT)]
        for layer in reversed(list(self.viewer.layers)):
            if type(layer).__name__ == "Labels" and layer.ndim == 2:
                if (layer.metadata or {}).get("prediction_of"):
                    continue  # the predictions themselves
                out.append((layer.name, layer))
        return out

    def connect_predict(self, widget: Any = None) -> Any:
        """Follow ``widget`` (default: the 'Predict vertebrae' of this viewer)."""
        widget = widget or find_dock_widget(self.viewer, "PredictWidget", dock=False)
        if widget is None or widget is self._source:
            return widget
        if self._source is not None:
            try:
                self._source.predicted.disconnect(self.refresh)
            except (TypeError, RuntimeError):
                pass
        self._source = widget
        widget.predicted.connect(self.refresh)
        if getattr(widget, "prediction", None) is not None:
            self.refresh()
        return widget

    def _annotate(self) -> Any:
        return find_dock_widget(self.viewer, "AnnotateWidget", dock_name="Annotate vertebrae")

    # ----------------------------------------------------------------- table
    def refresh(self) -> None:
        """Reload the prediction shown by 'Predict vertebrae' (all vertebrae pending)."""
        src = self.connect_predict() or self._source
        pred = getattr(src, "prediction", None)
        if pred is None:
            self.status.set("no prediction yet: run 'Predict vertebrae'", "warning")
            return
        self.prediction = pred
        raw = getattr(src, "raw", None)
        self.image_name = raw.image_name if raw is not None else ""
        self.states = ["pending"] * len(pred)
        self._added = {}
        self._project_snapshot = self._project_polygons()
        if len(pred):
            self.fix_class.value = class_name(int(pred.classes[0]))
        self._load_ground_truth()
        self._fill_table()
        if len(pred):
            self.select(0)
        self.status.set(f"{len(pred)} vertebra(e) to review on {self.image_name}", "info")

    def _project_polygons(self) -> list[VertebraAnnotation]:
        """The project's polygons of the predicted MIP now (before any review action)."""
        ann = find_dock_widget(self.viewer, "AnnotateWidget", dock=False)
        src = self._source
        target = src._target_layer() if src is not None and hasattr(src, "_target_layer") else None
        if ann is None or target is None or getattr(ann, "project", None) is None:
            return []
        try:
            key = ann.key_for(target)
            return ann.project.load(key) if key in ann.project else []
        except (ValueError, OSError, AttributeError):
            return []

    def _on_gt_changed(self) -> None:
        if self.prediction is not None:
            self._load_ground_truth()
            self._fill_table()

    def _load_ground_truth(self) -> None:
        """The ground-truth class image (or None) and the Dice of every vertebra."""
        self._gt_image = None
        choice = self.ground_truth.value
        pred = self.prediction
        if pred is None:
            return
        if choice == GT_PROJECT:
            if self._project_snapshot:
                self._gt_image = annotations_to_label_image(self._project_snapshot, pred.shape)
            else:
                self.status.set("the project has no polygons for this MIP", "warning")
        elif choice not in (None, GT_NONE):
            img = np.asarray(choice.data)
            if img.shape == tuple(pred.shape):
                self._gt_image = img
            else:
                self.status.set(
                    f"ground truth {choice.name!r} is {img.shape}, the MIP {pred.shape}", "error"
                )
        self.dice = [None] * len(pred)
        if self._gt_image is not None:
            for i, (m, c) in enumerate(zip(pred.masks, pred.classes, strict=True)):
                self.dice[i] = dice(m, self._gt_image == int(c))

    def _fill_table(self) -> None:
        pred = self.prediction
        n = 0 if pred is None else len(pred)
        self.table.setRowCount(n)
        for i in range(n):
            self._set_row(i)
        self._update_summary()

    def _set_row(self, i: int) -> None:
        pred = self.prediction
        name = class_name(int(pred.classes[i]))
        d = self.dice[i] if i < len(self.dice) else None
        cells = (
            name,
            f"{float(pred.scores[i]):.2f}",
            self.states[i],
            "-" if d is None else f"{d:.3f}",
        )
        for j, text in enumerate(cells):
            item = QTableWidgetItem(text)
            item.setTextAlignment(int(Qt.AlignmentFlag.AlignCenter))
            if j == 0:
                item.setForeground(_qcolor(class_colour(int(pred.classes[i]))))
            if j == 2:
                item.setForeground(_qcolor(_STATE_COLOURS[self.states[i]]))
            self.table.setItem(i, j, item)

    def _update_summary(self) -> None:
        counts = {s: self.states.count(s) for s in STATES}
        text = ", ".join(f"{counts[s]} {s}" for s in STATES)
        known = [d for d in self.dice if d is not None]
        if known:
            text += f"; mean Dice {np.mean(known):.3f} over {len(known)}"
        self.summary.value = text

    # ----------------------------------------------------------------- selection
    @property
    def current(self) -> int | None:
        """Selected row (vertebra index), or None."""
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if rows:
            return rows[0].row()
        return None

    def select(self, row: int) -> None:
        """Select vertebra ``row`` (highlights its box)."""
        if self.prediction is None or not 0 <= row < len(self.prediction):
            return
        self.table.selectRow(row)

    def _on_row_selected(self) -> None:
        i = self.current
        if i is None or self.prediction is None:
            return
        self.fix_class.value = class_name(int(self.prediction.classes[i]))
        boxes = getattr(self._source, "boxes_layer", None)
        if boxes is not None and boxes in self.viewer.layers and i < len(boxes.data):
            boxes.selected_data = {i}

    def next(self) -> int | None:
        """Select the next pending vertebra (wrapping round); returns its row or None."""
        if not self.states:
            return None
        start = (self.current if self.current is not None else -1) + 1
        n = len(self.states)
        for k in range(n):
            i = (start + k) % n
            if self.states[i] == "pending":
                self.select(i)
                return i
        self.status.set("every vertebra is reviewed", "ok")
        return None

    def _row(self, row: int | None) -> int | None:
        row = self.current if row is None else row
        if self.prediction is None or row is None or not 0 <= row < len(self.prediction):
            self.status.set("select a vertebra in the table first", "warning")
            return None
        return row

    # ----------------------------------------------------------------- actions
    def accept(self, row: int | None = None) -> bool:
        """Make vertebra ``row`` (default: the selected one) a polygon of the project."""
        i = self._row(row)
        if i is None:
            return False
        ok = self._add_polygon(i, int(self.prediction.classes[i]))
        if ok:
            self._set_state(i, "accepted")
            self.next()
        return ok

    def accept_all(self) -> int:
        """Accept every pending vertebra; returns how many."""
        if self.prediction is None:
            self.status.set("no prediction to accept", "warning")
            return 0
        taken = {a.class_id for a in self._added.values()}  # accepted or fixed already
        pending = [i for i, s in enumerate(self.states) if s == "pending"]
        todo = [i for i in pending if int(self.prediction.classes[i]) not in taken]
        anns = [self._annotation(i, int(self.prediction.classes[i])) for i in todo]
        done = [(i, a) for i, a in zip(todo, anns, strict=True) if a is not None]
        if not done or not self._apply({i: a for i, a in done}):
            return 0
        for i, _ in done:
            self._set_state(i, "accepted", notify=False)
        self._update_summary()
        msg = f"accepted {len(done)} vertebra(e) into the project"
        left = len(pending) - len(done)
        if left:
            msg += f"; {left} left pending (class already reviewed, or an empty mask)"
        self.status.set(msg, "ok")
        return len(done)

    def reject(self, row: int | None = None) -> bool:
        """Reject vertebra ``row``; a polygon accepted from it is removed again."""
        i = self._row(row)
        if i is None:
            return False
        if i in self._added and not self._remove_polygon(i):
            return False
        self._set_state(i, "rejected")
        self.next()
        return True

    def fix(self, row: int | None = None) -> bool:
        """Add vertebra ``row`` as a polygon of the 'fix as' class, select it and switch
        the Shapes layer to vertex editing."""
        i = self._row(row)
        if i is None:
            return False
        cid = class_id(self.fix_class.value)
        if not self._add_polygon(i, cid):
            return False
        self._set_state(i, "fixed")
        ann = self._annotate()
        shapes = getattr(ann, "shapes", None)
        if shapes is not None and "class_id" in shapes.features:
            picked = set(np.nonzero(shapes.features["class_id"].to_numpy() == cid)[0].tolist())
            self.viewer.layers.selection.active = shapes
            shapes.selected_data = picked
            shapes.mode = "direct"
        self.status.set(f"fix {class_name(cid)}: drag its vertices (autosaved)", "info")
        return True

    # ----------------------------------------------------------------- polygons
    def _annotation(self, i: int, cid: int) -> VertebraAnnotation | None:
        polys = mask_to_polygons(self.prediction.masks[i])
        if not polys:
            return None
        return VertebraAnnotation(cid, polys, score=float(self.prediction.scores[i]))

    def _add_polygon(self, i: int, cid: int) -> bool:
        a = self._annotation(i, cid)
        if a is None:
            self.fail(f"{class_name(cid)}: the predicted mask is empty")
            return False
        return self._apply({i: a})

    def _apply(self, new: dict[int, VertebraAnnotation]) -> bool:
        """Put ``new`` annotations into the project, replacing polygons of their classes."""
        ann = self._annotate()
        if ann is None:
            self.fail("Review: open 'Annotate vertebrae' (it holds the project)")
            return False
        if not self._bind_annotate_to_mip(ann):
            return False
        replaced = {a.class_id for a in new.values()}
        old_own = {i: a for i, a in self._added.items() if i in new}
        keep = [
            a
            for a in ann.annotations()
            if a.class_id not in replaced and not any(_same(a, o) for o in old_own.values())
        ]
        try:
            ann.set_annotations(keep + list(new.values()))
        except ValueError as e:
            self.fail(f"Review: {e}")
            return False
        self._added.update(new)
        return True

    def _remove_polygon(self, i: int) -> bool:
        ann = self._annotate()
        if ann is None or getattr(ann, "shapes", None) is None:
            self._added.pop(i, None)
            return True
        gone = self._added.pop(i)
        keep = [a for a in ann.annotations() if not _same(a, gone)]
        ann.set_annotations(keep)
        return True

    def _bind_annotate_to_mip(self, ann: Any) -> bool:
        """Make sure 'Annotate vertebrae' works on the MIP that was predicted on."""
        target = None
        src = self._source
        if src is not None and hasattr(src, "_target_layer"):
            target = src._target_layer()
        if target is None:
            self.fail("Review: the predicted MIP layer is gone")
            return False
        if getattr(ann, "_mip", None) is not target:
            ann.refresh_choices()
            ann.mip_layer.value = target
        if getattr(ann, "shapes", None) is None:
            self.fail("Review: 'Annotate vertebrae' has no Shapes layer for the MIP")
            return False
        return True

    def _set_state(self, i: int, state: str, notify: bool = True) -> None:
        self.states[i] = state
        self._set_row(i)
        if notify:
            self._update_summary()
            self.status.set(f"{class_name(int(self.prediction.classes[i]))} {state}", "ok")
        self.reviewed.emit(i, state)

    # ----------------------------------------------------------------- shortcuts
    def bind_shortcuts(self, on: bool = True) -> None:
        """Bind (or unbind) the review keys on the viewer."""
        if on:
            for key, (method, _) in SHORTCUTS.items():
                fn = getattr(self, method)
                handler = _key_handler(fn)
                self.viewer.bind_key(key, handler, overwrite=True)
                self._bound[key] = handler
        else:
            for key, handler in list(self._bound.items()):
                try:
                    if self.viewer.keymap.get(_kb(key)) is handler:
                        self.viewer.bind_key(key, None)
                except Exception:
                    pass
                self._bound.pop(key, None)

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        self.bind_shortcuts(True)
        if self.prediction is None:
            self.connect_predict()

    def hideEvent(self, event: Any) -> None:
        self.bind_shortcuts(False)
        super().hideEvent(event)

    def close_widget(self) -> None:
        self.bind_shortcuts(False)
        super().close_widget()


def _key_handler(fn: Any) -> Any:
    def handler(_viewer: Any) -> None:
        fn()

    return handler


def _kb(key: str) -> Any:
    from napari.utils.key_bindings import coerce_keybinding

    return coerce_keybinding(key)


def _same(a: VertebraAnnotation, b: VertebraAnnotation) -> bool:
    """Same class and the same polygons (an annotation this widget added)."""
    if a.class_id != b.class_id or len(a.polygons) != len(b.polygons):
        return False
    return all(
        p.shape == q.shape and np.allclose(p, q, atol=1e-2)
        for p, q in zip(a.polygons, b.polygons, strict=True)
    )


def _qcolor(hex_colour: str) -> Any:
    from qtpy.QtGui import QColor

    return QColor(hex_colour)
