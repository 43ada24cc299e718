"""Messages to the user: the widgets' coloured status line and napari notifications.

:class:`StatusLine` shows one message in a widget (coloured by level, wrapped, as tall as
its text); :func:`notify` shows a napari notification; :func:`error_message` turns an
exception into plain words for either.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, QObject

__all__ = ["StatusLine", "error_message", "notify"]

_LEVEL_STYLE = {
    "info": "",
    "busy": "color: #8ab4f8;",
    "ok": "color: #7bd88f;",
    "warning": "color: #ffb454;",
    "error": "color: #ff6b6b; font-weight: bold;",
}


def error_message(exc: BaseException) -> str:
    """A one-paragraph message for a user: the exception text, or its type when empty."""
    text = str(exc).strip()
    if isinstance(exc, (ValueError, OSError, RuntimeError, KeyError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def notify(message: str, level: str = "info") -> None:
    """Show a napari notification (``level``: info, warning or error); never raises."""
    try:
        from napari.utils import notifications

        fn = {
            "warning": notifications.show_warning,
            "error": notifications.show_error,
        }.get(level, notifications.show_info)
        fn(message)
    except Exception:  # the notification system must never break a widget
        print(f"[napari-vertebra] {level}: {message}")


class StatusLine:
    """A magicgui Label used as a one-line status, coloured by level.

    ``status.set("done", "ok")``; ``status.value`` / ``status.level`` for tests.
    """

    def __init__(self, label: Any):
        self.label = label
        self.level = "info"
        self._fit = None
        try:
            self.label.native.setWordWrap(True)
            # a wrapped label whose width the dock sets (size policy Ignored) is given
            # the height of its one-line text: long messages were cut off at the bottom
            self._fit = _FitHeight(self.label.native)
        except (AttributeError, TypeError):
            pass

    @property
    def value(self) -> str:
        return str(self.label.value)

    @property
    def min_height(self) -> int:
        """The least height of the label in pixels (it grows for a longer message)."""
        return self._fit.floor if self._fit is not None else 0

    @min_height.setter
    def min_height(self, px: int) -> None:
        if self._fit is not None:
            self._fit.floor = int(px)
            self._fit.update()

    def set(self, message: str, level: str = "info") -> None:
        """Show ``message`` (levels: info, busy, ok, warning, error)."""
        self.level = level
        self.label.value = message
        try:
            self.label.native.setStyleSheet(_LEVEL_STYLE.get(level, ""))
            self.label.native.setToolTip(message)
        except (AttributeError, RuntimeError):
            pass
        if self._fit is not None:
            self._fit.update()


class _FitHeight(QObject):
    """Keeps a word-wrapped QLabel at least as tall as its text at its current width."""

    def __init__(self, label: Any):
        super().__init__(label)
        self._label = label
        self.floor = 0  # px, the least height
        label.installEventFilter(self)

    def update(self) -> None:
        """Set the label's minimum height for its text at its width."""
        lab = self._label
        try:
            width = lab.width()
            need = lab.heightForWidth(width) if width > 20 else 0
            lab.setMinimumHeight(max(self.floor, need))
        except RuntimeError:  # the label was deleted with its widget
            pass

    def eventFilter(self, obj: Any, event: Any) -> bool:  # Qt names it
        if event.type() == QEvent.Type.Resize:
            self.update()
        return False
