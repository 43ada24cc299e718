"""The common shape of the napari-vertebra dock widgets.

Each widget is a ``QWidget`` built as ``Widget(viewer)``. Its controls are magicgui
value widgets kept as attributes (tests set ``widget.some_field.value = ...``) and its
actions are methods (tests call ``widget.run()``; ``self.button(text, action)`` makes
the button that calls one). Long work goes through
``self.runner`` (:class:`~._threading.TaskRunner`), which drives ``self.progress_bar``
and ``self.status``. What widgets share goes through ``self.session`` (the viewer's
:class:`~._session.Session`), never through another widget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QFrame, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from ._reader import prefer_this_reader
from ._session import Session, session_for
from ._status import StatusLine, notify
from ._threading import TaskRunner
from ._view import follow_visible_dims, home_fits_visible

if TYPE_CHECKING:  # napari passes the viewer to a parameter annotated like this
    import napari.viewer

__all__ = ["VertebraWidget", "layer_combo"]


def layer_combo(
    viewer: Any,
    layer_types: str | tuple[str, ...],
    label: str,
    nullable: bool = False,
    predicate: Callable[[Any], bool] | None = None,
) -> ComboBox:
    """A ComboBox of the viewer's layers of ``layer_types`` (class names, e.g. "Image")."""
    types = (layer_types,) if isinstance(layer_types, str) else tuple(layer_types)

    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        out = [
            (layer.name, layer)
            for layer in reversed(list(viewer.layers))
            if type(layer).__name__ in types and (predicate is None or predicate(layer))
        ]
        return out

    return ComboBox(label=label, choices=choices, nullable=nullable)


class VertebraWidget(QWidget):
    """Base: a vertical stack of magicgui containers / Qt widgets, a status, a runner."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer
        #: The viewer's shared state: widgets talk to it, never to one another.
        self.session: Session = session_for(viewer)
        prefer_this_reader()
        follow_visible_dims(viewer)  # no slice slider under a 2D view of hidden volumes
        home_fits_visible(viewer)  # Home fits the MIP, not the hidden volumes
        # the controls live in a scroll area: a short window scrolls instead of squashing
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self._scroll = QScrollArea(self)
        self._scroll.setWidgetResizable(True)
        self._scroll.setFrameShape(QFrame.Shape.NoFrame)
        self._scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._inner = QWidget()
        self._scroll.setWidget(self._inner)
        outer.addWidget(self._scroll)
        self._layout = QVBoxLayout(self._inner)
        self._layout.setContentsMargins(6, 6, 6, 6)
        self._layout.setSpacing(4)
        self._combos: list[ComboBox] = []
        self._connections: list[tuple[Any, Callable]] = []
        self.progress_bar = ProgressBar(value=0, min=0, max=100, label="progress")
        self.progress_bar.visible = False
        self.status_label = Label(value="")
        self.status = StatusLine(self.status_label)
        self.runner = TaskRunner(progress_bar=self.progress_bar, status=self.status, owner=self)
        self._closed = False
        events = viewer.layers.events
        for name in ("inserted", "removed", "reordered", "renamed"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                self._listen(emitter, self._on_layers_changed)
        self.destroyed.connect(_disconnector(self._connections))

    # -- building ----------------------------------------------------------------------
    def add(self, item: Any, stretch: int = 0) -> Any:
        """Append a magicgui widget / container or a QWidget to the stack; returns it."""
        native = getattr(item, "native", item)
        if isinstance(native, QLabel) and native.wordWrap():
            # a wrapped text takes the dock's width; by default its one-line width would
            # become the dock's minimum and the controls would be cut off on the right
            native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self._layout.addWidget(native, stretch)
        return item

    def add_form(self, *widgets: Any, labels: bool = True) -> Container:
        """A magicgui Container of ``widgets`` (label column), appended to the stack."""
        box = Container(widgets=list(widgets), labels=labels)
        box.margins = (0, 0, 0, 0)
        self.add(box)
        for w in widgets:
            if isinstance(w, ComboBox):
                self._combos.append(w)
        return box

    def button(
        self, text: str, action: Callable[[], Any], tooltip: str | None = None
    ) -> PushButton:
        """A PushButton that calls ``action()`` when pressed (not yet in the stack)."""
        button = PushButton(text=text)
        if tooltip is not None:
            button.tooltip = tooltip
        button.changed.connect(lambda *_: action())
        return button

    def add_buttons(self, *buttons: PushButton) -> Container:
        """A row of buttons appended to the stack."""
        row = Container(widgets=list(buttons), layout="horizontal", labels=False)
        row.margins = (0, 0, 0, 0)
        self.add(row)
        return row

    def add_status(self) -> None:
        """Append the progress bar and the status line (call last)."""
        box = Container(widgets=[self.progress_bar, self.status_label], labels=False)
        box.margins = (0, 0, 0, 0)
        native = self.status_label.native
        # the width of the dock (not of its one-line text), at least 4 lines tall and as
        # tall as a longer message needs
        native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.status.min_height = 4 * native.fontMetrics().lineSpacing() + 6
        native.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.add(box)
        self._layout.addStretch(1)

    def sizeHint(self) -> QSize:
        """As wide as the controls need (the scroll area alone would hint too small)."""
        hint = self._inner.sizeHint()
        bar = self._scroll.verticalScrollBar().sizeHint().width()
        return QSize(hint.width() + bar, min(hint.height(), 900))

    # -- layer lists -------------------------------------------------------------------
    def _listen(self, emitter: Any, callback: Callable) -> None:
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def refresh_choices(self, *_: Any) -> None:
        """Re-read the layer lists of every layer picker."""
        for combo in self._combos:
            try:
                combo.reset_choices()
            except RuntimeError:  # deleted
                pass

    def _on_layers_changed(self, *_: Any) -> None:
        self.refresh_choices()

    def layers_of(self, *types: str) -> Iterable[Any]:
        """The viewer's layers whose class name is one of ``types``."""
        return [layer for layer in self.viewer.layers if type(layer).__name__ in types]

    # -- later -------------------------------------------------------------------------
    def later(self, fn: Callable[[], Any], ms: int = 0) -> None:
        """Call ``fn()`` in a later event-loop turn (after ``ms``), unless the widget is
        closed or deleted by then (its timer goes with it: closing the viewer while a
        result is being shown leaves nothing to run on deleted widgets)."""
        try:
            timer = QTimer(self)
        except RuntimeError:  # the widget is being deleted: nothing is left to do
            return
        timer.setSingleShot(True)

        def fire() -> None:
            timer.deleteLater()
            if not self._closed:
                fn()

        timer.timeout.connect(fire)
        timer.start(int(ms))

    # -- messages ----------------------------------------------------------------------
    def fail(self, message: str) -> None:
        """Show an error in the status line and as a napari notification."""
        self.status.set(message, "error")
        notify(message, "error")

    def close_widget(self) -> None:
        """Disconnect from the viewer and drop what was left to do later (called by
        tests and on close)."""
        self._closed = True
        _disconnector(self._connections)()

    def closeEvent(self, event: Any) -> None:
        self.close_widget()
        super().closeEvent(event)


def _disconnector(connections: list[tuple[Any, Callable]]) -> Callable[..., None]:
    """A callable (holding no widget reference) that drops every viewer connection."""

    def disconnect(*_: Any) -> None:
        while connections:
            emitter, callback = connections.pop()
            try:
                emitter.disconnect(callback)
            except (RuntimeError, TypeError, ValueError):  # the emitter went with its object
                continue

    return disconnect
