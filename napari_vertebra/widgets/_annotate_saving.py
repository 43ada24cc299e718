"""Saving, checks and the undo history of 'Annotate vertebrae' (a mixin of
:class:`~.annotate.AnnotateWidget`). The files are written by the session's project on
its background thread (:class:`~napari_vertebra.annotation.session.AnnotationSession`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QListWidgetItem

from napari_vertebra.annotation.level_tools import shift_levels
from napari_vertebra.annotation.polygons import check_image_annotations

from ._shapes import shapes_to_annotations
from ._status import error_message, notify

__all__ = ["AnnotateSaving"]

#: History entries shown in the widget (newest first).
_HISTORY_SHOWN = 6


class AnnotateSaving:
    """Mixin: load / save the polygons, the Checks list, undo / redo, shift levels.

    Uses the widget's ``session``, ``shapes``, ``_mip``, ``image_key``, ``status``,
    ``autosave_label``, ``warnings_list``, ``history_list``, ``undo_button``,
    ``redo_button`` and the drawing mixin's ``annotations`` / ``set_annotations``.
    """

    def _load_saved(self, key: str) -> None:
        if self.project is None or self.shapes is None:
            return
        try:
            saved = self.session.annotation.load(key)
        except ValueError as e:
            self.fail(f"Annotate: {error_message(e)}")
            return
        finally:
            self.notify_project_repairs()
        if saved:
            self.set_annotations(saved, save=False)
            self.status.set(f"loaded {_vertebrae(len(saved))} of {key} from the project", "ok")
            self._show_saved("saved", len(saved), " (every change is autosaved)")
        self._show_history()

    def _has_saved(self, key: str) -> bool:
        """Whether the project holds polygons for ``key`` (True for a file it cannot
        read, so that loading it says why)."""
        if self.project is None:
            return False
        try:
            return bool(self.project.load(key))
        except ValueError:
            return True

    def notify_project_repairs(self) -> None:
        """Show what reading the project repaired (one napari warning each)."""
        for note in self.session.annotation.take_warnings():
            notify(f"Project: {note}", "warning")

    def _show_saved(self, what: str, n: int, note: str = "") -> None:
        """The autosave line: ``what`` (e.g. "autosaved 12:01:02") and the ``n``
        vertebrae that the project's file now holds for this MIP."""
        folder = self.project.folder.name if self.project is not None else "-"
        self.autosave_label.value = f"{what} · {_vertebrae(n)} in {folder}{note}"

    def _image_meta(self) -> dict:
        """What the project records with an image: the MIP layer's name; for a MIP of
        'Preprocess CT' its grid (so that a re-run's MIP gets its own key, and its pixel
        spacing); else the pixel spacing an imported COCO file gave the layer."""
        meta = {"layer": self._mip.name}
        for key in ("mip_grid", "spacing_mm"):
            value = (self._mip.metadata or {}).get(key)
            if value:
                meta[key] = value
        return meta

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
        session = self.session.annotation
        key = self.image_key.value or self.key_for(self._mip)
        new_image = key not in session
        try:
            anns = self.annotations()
            stamp = session.save(
                key, anns, label, image=np.asarray(self._mip.data, np.float32),
                scan=self.scan_for(self._mip), meta=self._image_meta(),
                explicit=explicit,
            )  # fmt: skip
        except (ValueError, OSError) as e:
            self.fail(f"Could not save annotations: {error_message(e)}")
            return False
        if new_image:
            self._refresh_project_images()
        self.n_saves += 1
        self._show_saved(f"autosaved {stamp}", len(anns))
        if explicit:
            self.status.set(f"saved {len(anns)} vertebrae to {self.project.folder}", "ok")
        else:
            self.status.set(f"autosaved {stamp}: {label}", "ok")
        self._show_history()
        return True

    # -- history -------------------------------------------------------------------------
    def _history(self) -> Any:
        if self._mip is None:
            return None
        return self.session.annotation.history(self.image_key.value)

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
            session = self.session.annotation
            anns = session.redo(key) if redo else session.undo(key)
        except (ValueError, OSError) as e:
            self.fail(f"{'Redo' if redo else 'Undo'}: {error_message(e)}")
            return False
        if anns is None:
            self.status.set(f"nothing to {'redo' if redo else 'undo'}", "info")
            self._show_history()
            return False
        self.set_annotations(anns, save=False)
        self._show_history()
        done = "redid" if redo else "undid"
        self._show_saved(f"{done} {what} {time.strftime('%H:%M:%S')}", len(anns))
        self.status.set(f"{done}: {what}; {_vertebrae(len(anns))} now, saved", "ok")
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


def _vertebrae(n: int) -> str:
    """ "1 vertebra", "2 vertebrae"."""
    return f"{n} vertebra" if n == 1 else f"{n} vertebrae"
