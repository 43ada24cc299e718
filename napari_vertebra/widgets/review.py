"""The "Review predictions" widget: accept, reject or fix predicted vertebrae.

A thin view over :class:`~napari_vertebra.annotation.review.ReviewController`: it lists
the vertebrae of the prediction on screen (the viewer session's, published by 'Predict
vertebrae': class, score, state and, with a ground truth, Dice) and puts the
controller's annotations into the polygons on screen (the session's, shown by 'Annotate
vertebrae': one undoable, autosaved step each).

Nothing is lost: a prediction accepted for a vertebra that already has a polygon (drawn
by hand, from 3D labels) asks first: replace it (Reject brings it back exactly) or keep
both (the prediction marked ``source="model"`` with its score). "Accept all pending"
asks with a count before replacing any polygon.

Keyboard shortcuts, while the widget is shown: A accept, R reject, F fix, N next
pending. They are bound on the viewer and on the plugin's own layers (predicted boxes
and labels, the vertebra polygons), whose napari keys (R rectangle, A select all, F to
front) they override until the widget is hidden again.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Label
from qtpy.QtCore import Signal

from napari_vertebra.annotation.polygons import annotations_to_label_image
from napari_vertebra.annotation.review import ReviewController, ReviewError, dice_scores
from napari_vertebra.core.labels import VERTEBRAE, class_id, class_name, class_set_of_size

from ._base import VertebraWidget
from ._keys import KeyBindings
from ._review_interaction import TOOLTIPS, ReviewInteraction
from ._review_table import ReviewTable
from ._shapes import shapes_to_annotations

if TYPE_CHECKING:  # napari passes the viewer to a parameter annotated like this
    import napari.viewer

__all__ = ["SHORTCUTS", "ReviewWidget"]

#: key -> (method name, description)
SHORTCUTS = {
    "a": ("accept", "accept"),
    "r": ("reject", "reject"),
    "f": ("fix", "fix (add for editing)"),
    "n": ("next", "next pending"),
}
GT_NONE = "none"
GT_PROJECT = "project polygons"


class ReviewWidget(ReviewInteraction, VertebraWidget):
    """Review the vertebrae predicted by 'Predict vertebrae'.

    Attributes: ``controller`` (the :class:`ReviewController`, None before a
    prediction), ``table`` (:class:`ReviewTable`, one row per vertebra), ``states``, ``dice``,
    ``ground_truth`` (none, the project's polygons of the MIP, or a 2D Labels layer of
    class ids), ``fix_class`` (class given by Fix), buttons ``*_button``. Handlers:
    :meth:`refresh`, :meth:`accept`, :meth:`accept_all`, :meth:`reject`, :meth:`fix`,
    :meth:`next`, :meth:`select`, :meth:`bind_shortcuts`; :meth:`ask` asks the user
    (tests replace it).
    """

    #: Emitted after a vertebra's state changed (row, state).
    reviewed = Signal(int, str)

    def __init__(self, viewer: napari.viewer.Viewer, parent: Any = None) -> None:
        super().__init__(viewer, parent)
        self.prediction: Any = None
        self.controller: ReviewController | None = None
        self.image_name = ""
        self.dice: list[float | None] = []
        self._dock: Any = None
        self.keys = KeyBindings({k: getattr(self, m) for k, (m, _) in SHORTCUTS.items()})
        self._add_sources()
        self.table = ReviewTable()
        self.add(self.table, stretch=1)
        self._add_actions()
        self.summary = Label(value="")
        self.summary.native.setWordWrap(True)
        self.add(self.summary)
        keys = " · ".join(f"<b>{k.upper()}</b> {d}" for k, (_, d) in SHORTCUTS.items())
        self.help_label = Label(
            value=f"<b>Shortcuts</b> (any layer, while this is shown): {keys}. A polygon "
            "already there is never replaced without asking; Reject restores it."
        )
        self.help_label.native.setWordWrap(True)
        self.add(self.help_label)
        self.add_status()
        self.ground_truth.changed.connect(lambda *_: self._on_gt_changed())
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self._listen(self.session.prediction_changed, self._on_prediction_changed)
        self.refresh_choices()
        if self.session.prediction is not None:
            self.refresh()

    def _add_sources(self) -> None:
        """The ground truth and 'fix as' pickers and the level confidence line."""
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
        self.levels_label = Label(value="")  # the level confidence of the prediction
        self.levels_label.native.setWordWrap(True)
        self.add(self.levels_label)
        self._combos.append(self.ground_truth)

    def _add_actions(self) -> None:
        """Accept / Reject / Fix, Accept all pending / Next / Reload prediction."""
        accept_tip, reject_tip, fix_tip, accept_all_tip = TOOLTIPS
        self.accept_button = self.button("Accept (A)", self.accept, accept_tip)
        self.reject_button = self.button("Reject (R)", self.reject, reject_tip)
        self.fix_button = self.button("Fix (F)", self.fix, fix_tip)
        self.add_buttons(self.accept_button, self.reject_button, self.fix_button)
        self.accept_all_button = self.button("Accept all pending", self.accept_all, accept_all_tip)
        self.next_button = self.button("Next (N)", self.next)
        self.refresh_button = self.button("Reload prediction", self.refresh)
        self.add_buttons(self.accept_all_button, self.next_button, self.refresh_button)

    @property
    def states(self) -> list[str]:
        """State of every vertebra: pending / accepted / rejected / fixed."""
        return self.controller.states if self.controller is not None else []

    # ----------------------------------------------------------------- sources
    def _gt_choices(self, *_: Any) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [(GT_NONE, GT_NONE), (GT_PROJECT, GT_PROJECT)]
        for layer in reversed(list(self.viewer.layers)):
            if type(layer).__name__ == "Labels" and layer.ndim == 2:
                if not (layer.metadata or {}).get("prediction_of"):  # not the predictions
                    out.append((layer.name, layer))
        return out

    def _on_prediction_changed(self, shown: Any) -> None:
        if shown is not None:
            self.refresh()

    def _shown(self) -> Any:
        """The session's :class:`~._session.ShownPrediction` (or None)."""
        return self.session.prediction

    def _target(self) -> Any:
        shown = self._shown()
        return shown.target if shown is not None else None

    # ----------------------------------------------------------------- table
    def refresh(self) -> None:
        """Reload the prediction shown by 'Predict vertebrae' (all vertebrae pending)."""
        shown = self._shown()
        if shown is None or shown.prediction is None:
            self.status.set("no prediction yet: run 'Predict vertebrae'", "warning")
            return
        pred = self.prediction = shown.prediction
        self.image_name = shown.image_name
        self.controller = ReviewController.from_prediction(
            pred.masks, pred.classes, pred.scores, before=self._project_polygons()
        )
        n_cls = np.shape(pred.class_probs)[1] if np.ndim(pred.class_probs) == 2 else 17
        levels = list(class_set_of_size(n_cls).levels)
        if list(self.fix_class.choices) != levels:
            self.fix_class.choices = levels
        summary = getattr(pred, "level_summary", "") if len(pred) else ""
        self.levels_label.value = f"Levels: {summary}" if summary else ""
        if len(pred):
            self.fix_class.value = class_name(int(pred.classes[0]))
        self._load_ground_truth()
        self._fill_table()
        if len(pred):
            self.select(0)
        if self.keys.active:  # new prediction layers: bind the keys on them too
            self.bind_shortcuts(True)
        self.status.set(f"{len(pred)} vertebra(e) to review on {self.image_name}", "info")

    def _project_polygons(self) -> list:
        """The project's polygons of the predicted MIP now (before any review action)."""
        target, annotation = self._target(), self.session.annotation
        if target is None or annotation.project is None:
            return []
        shown = self.session.polygons_of(target)
        try:
            if shown is not None:
                key = shown.key
            else:
                shape = np.asarray(target.data).shape[-2:]
                key = annotation.key_for(target.name, target.metadata, shape)
            return annotation.load(key)
        except (ValueError, OSError) as e:
            self.status.set(f"Review: the project's polygons could not be read ({e})", "warning")
            return []

    def _on_gt_changed(self) -> None:
        if self.prediction is not None:
            self._load_ground_truth()
            self._fill_table()

    def _load_ground_truth(self) -> None:
        """The Dice of every vertebra with the chosen ground truth (None without)."""
        choice, pred, gt = self.ground_truth.value, self.prediction, None
        if choice == GT_PROJECT:
            before = self.controller.before
            if before:
                gt = annotations_to_label_image(before, pred.shape)
            else:
                self.status.set("the project has no polygons for this MIP", "warning")
        elif choice not in (None, GT_NONE):
            gt = np.asarray(choice.data)
            if gt.shape != tuple(pred.shape):
                self.status.set(
                    f"ground truth {choice.name!r} is {gt.shape}, the MIP {pred.shape}", "error"
                )
                gt = None
        self.dice = dice_scores(pred.masks, pred.classes, gt)

    def _fill_table(self, annotations: list | None = None) -> None:
        self.table.show_items(self.controller.items, self.dice)
        self._update_summary(annotations)

    def _update_summary(self, annotations: list | None = None) -> None:
        if self.controller is not None:
            self.summary.value = self.controller.summary(self.dice, annotations)

    # ----------------------------------------------------------------- selection
    @property
    def current(self) -> int | None:
        """Selected row (vertebra index), or None."""
        return self.table.current

    def select(self, row: int) -> None:
        """Select vertebra ``row`` (highlights its box)."""
        if 0 <= row < len(self.states):
            self.table.selectRow(row)

    def _on_row_selected(self) -> None:
        i = self.current
        if i is None or self.controller is None:
            return
        self.fix_class.value = self.controller.items[i].name
        shown = self._shown()
        boxes = shown.boxes_layer if shown is not None else None
        if boxes is not None and boxes in self.viewer.layers and i < len(boxes.data):
            boxes.selected_data = {i}

    def next(self) -> int | None:
        """Select the next pending vertebra (wrapping round); returns its row or None."""
        if not self.states:
            return None
        i = self.controller.next_pending(self.current)
        if i is None:
            self.status.set("every vertebra is reviewed", "ok")
        else:
            self.select(i)
        return i

    def _row(self, row: int | None) -> int | None:
        row = self.current if row is None else row
        if self.controller is None or row is None or not 0 <= row < len(self.states):
            self.status.set("select a vertebra in the table first", "warning")
            return None
        return row

    # ----------------------------------------------------------------- actions
    def accept(self, row: int | None = None) -> bool:
        """Make vertebra ``row`` (default: the selected one) a polygon of the project."""
        return self._accept(row, None)

    def fix(self, row: int | None = None) -> bool:
        """Add vertebra ``row`` as a polygon of the 'fix as' class, select it and switch
        the Shapes layer to vertex editing."""
        return self._accept(row, class_id(self.fix_class.value))

    def _accept(self, row: int | None, fix_as: int | None) -> bool:
        i = self._row(row)
        anns = self._current_annotations() if i is not None else None
        if anns is None:
            return False
        ctrl, item = self.controller, self.controller.items[i]
        go, answer = self._answer(ctrl.accept_question(i, anns, fix_as))
        if not go:
            return False
        if fix_as is None:
            ok = self._apply(lambda: ctrl.accept(i, anns, answer), [i])
        else:
            ok = self._apply(lambda: ctrl.fix(i, anns, fix_as, answer), [i])
        if not ok:
            return False
        said = self.status.value, self.status.level  # what the action did (see _after)
        if fix_as is None:
            self.next()
        else:
            self._edit(item.added)
            said = f"{said[0]}; drag its vertices (autosaved)", said[1]
        self.status.set(*said)
        return True

    def reject(self, row: int | None = None) -> bool:
        """Reject vertebra ``row``; a polygon accepted from it goes, and the polygon it
        had replaced comes back."""
        i = self._row(row)
        if i is None:
            return False
        if self.controller.items[i].added is None:
            self.controller.reject(i, [])
            self._after([i], None)
        else:
            anns = self._current_annotations()
            if anns is None or not self._apply(lambda: self.controller.reject(i, anns), [i]):
                return False
        self.next()
        return True

    def accept_all(self) -> int:
        """Accept every pending vertebra (asking before replacing polygons); returns how
        many were accepted."""
        anns = self._current_annotations() if self.controller is not None else None
        if anns is None:
            if self.controller is None:
                self.status.set("no prediction to accept", "warning")
            return 0
        plan = self.controller.plan_accept_all(anns)
        go, answer = self._answer(plan.question())
        if not go:
            return 0
        done: list[int] = []

        def act() -> list:
            new, rows = self.controller.accept_all(anns, answer)
            done.extend(rows)
            return new

        if not plan.rows or not self._apply(act, list(plan.rows)):
            return 0
        msg = f"accepted {len(done)} vertebra(e) into the project"
        n_old = sum(len(self.controller.items[i].replaced) for i in done)
        if n_old:
            msg += f", replacing {n_old} polygon(s) (Reject on a row or Ctrl+Z brings them back)"
        left = self.states.count("pending")
        if left:
            msg += f"; {left} left pending (class already reviewed or kept, or an empty mask)"
        self.status.set(msg, "ok")
        return len(done)

    # ----------------------------------------------------------------- project
    def _current_annotations(self) -> list | None:
        """The polygons of the predicted MIP on screen (None: not usable); asks the
        session to show them ('Annotate vertebrae' is opened when needed)."""
        target = self._target()
        if target is None or target not in self.viewer.layers:
            self.fail("Review: the predicted MIP layer is gone")
            return None
        shown = self.session.show_polygons_of(target)
        if shown is None:
            self.fail("Review: open 'Annotate vertebrae' (it shows the MIP's polygons)")
            return None
        return shapes_to_annotations(shown.layer)[0]

    def _apply(self, action: Any, rows: list[int]) -> bool:
        """Run a controller action and put its annotations into the project; on any
        error the controller's states are put back."""
        saved = copy.deepcopy(self.controller.items)
        try:
            new = action()
            if not self.session.replace_annotations(new, label="review"):
                raise ValueError("no polygons on screen: open 'Annotate vertebrae'")
        except (ReviewError, ValueError, OSError) as e:
            self.controller.items = saved
            self.fail(f"Review: {e}")
            return False
        self._after(rows, new)
        return True

    def _after(self, rows: list[int], annotations: list | None) -> None:
        self._fill_table(annotations)  # accepting may reject another row too
        if len(rows) == 1:
            i = rows[0]
            added = self.controller.items[i].added
            same = [a for a in annotations or [] if added and a.class_id == added.class_id]
            text = self.controller.outcome(i, annotations or [])
            self.status.set(text, "warning" if len(same) > 1 else "ok")  # the class twice
        for i in rows:
            self.reviewed.emit(i, self.states[i])

    def _edit(self, added: Any) -> None:
        """Select the polygon Fix added and switch its layer to vertex editing."""
        polygons = self.session.polygons
        shapes = polygons.layer if polygons is not None else None
        if shapes is None or added is None:
            return
        picked = {
            k
            for k, data in enumerate(shapes.data)
            if any(_same_outline(np.asarray(data)[:, -2:], p) for p in added.polygons)
        }
        self.viewer.layers.selection.active = shapes
        shapes.selected_data = picked
        shapes.mode = "direct"


def _same_outline(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=1e-2))
