"""How 'Review predictions' talks to the user: questions and the A / R / F / N keys
(a mixin of :class:`~.review.ReviewWidget`).

The keys are bound exactly while the widget is on screen, on the viewer and on the
plugin's layers (predicted boxes and labels, the vertebra polygons), whose napari keys
(R rectangle, A select all, F to front) they override until the widget is hidden.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QDockWidget, QMessageBox

from napari_vertebra.annotation.review import Question

__all__ = ["TOOLTIPS", "ReviewInteraction"]

#: Tooltips of Accept, Reject, Fix and Accept all pending.
TOOLTIPS = (
    "The vertebra becomes one polygon of the project (source 'model', with its score;\n"
    "a fragmented mask is merged into one outline). If its vertebra already has a\n"
    "polygon (drawn by hand, from 3D labels) you are asked: keep both (Enter) or\n"
    "replace it (Reject brings it back exactly).",
    "Drop it; if it was accepted, its polygon goes and the one it replaced comes back",
    "Add it as a polygon of the 'fix as' class and edit its vertices (D: direct select)",
    "Accept every pending vertebra (the best-scored one per class). If some already\n"
    "have polygons you are asked, with their number, whether to replace them or\n"
    "accept only the others.",
)


class ReviewInteraction:
    """Mixin: :meth:`ask`, :meth:`bind_shortcuts` and following the dock's visibility.

    Uses the widget's ``viewer``, ``session``, ``keys`` (a
    :class:`~._keys.KeyBindings`), ``prediction``, ``status``, ``_dock`` and
    ``refresh``.
    """

    # ----------------------------------------------------------------- questions
    def ask(self, title: str, text: str, choices: dict[str, str]) -> str | None:
        """Ask the user; returns the key of the chosen button of ``choices`` (key ->
        button text), None for Cancel or Escape. The first choice is the default button
        (Enter, and the keyboard focus): the controller puts the answer that takes
        nothing out first. Tests replace this method."""
        box = QMessageBox(QMessageBox.Icon.Question, title, text, parent=self)
        role = QMessageBox.ButtonRole.AcceptRole
        buttons = {box.addButton(t, role): k for k, t in choices.items()}
        cancel = box.addButton(QMessageBox.StandardButton.Cancel)
        box.setEscapeButton(cancel)
        if buttons:
            first = next(iter(buttons))
            box.setDefaultButton(first)
            first.setFocus()
        box.exec()
        return buttons.get(box.clickedButton())

    def _answer(self, question: Question | None) -> tuple[bool, str | None]:
        """(go on, answer) for ``question`` (no question: go on without an answer)."""
        if question is None:
            return True, None
        answer = self.ask(question.title, question.text, question.choices)
        if answer is None:
            self.status.set(f"{question.title}: nothing changed", "info")
        return answer is not None, answer

    # ----------------------------------------------------------------- shortcuts
    def bind_shortcuts(self, on: bool = True) -> None:
        """Bind (or unbind) A / R / F / N on the viewer and the plugin's layers (predicted
        boxes and labels, the vertebra polygons); unbinding gives their own keys back."""
        if not on:
            self.keys.unbind()
            return
        shown, polygons = self._shown(), self.session.polygons
        layers = [
            shown.boxes_layer if shown is not None else None,
            shown.labels_layer if shown is not None else None,
            polygons.layer if polygons is not None else None,
        ]
        self.keys.bind(
            [self.viewer, *(la for la in layers if la is not None and la in self.viewer.layers)]
        )

    def _on_layers_changed(self, *args: Any) -> None:
        super()._on_layers_changed(*args)
        if self.keys.active:
            self.bind_shortcuts(True)

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        self._watch_dock()
        self.later(self._sync_keys)
        if self.prediction is None and self.session.prediction is not None:
            self.refresh()

    def hideEvent(self, event: Any) -> None:
        self.bind_shortcuts(False)
        super().hideEvent(event)

    def _watch_dock(self) -> None:
        """Follow the dock's visibility: a tabbed dock whose tab is not the current one
        stays "visible" to Qt (no hideEvent), but the user does not see it."""
        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        if dock is not None and dock is not self._dock:
            self._dock = dock
            dock.visibilityChanged.connect(lambda *_: self.later(self._sync_keys))

    def _sync_keys(self) -> None:
        """Keys bound exactly while the widget is on screen."""
        try:
            self.bind_shortcuts(self.isVisible() and not self.visibleRegion().isEmpty())
        except RuntimeError:  # deleted meanwhile
            pass

    def close_widget(self) -> None:
        self.bind_shortcuts(False)
        super().close_widget()
