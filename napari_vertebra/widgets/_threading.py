"""Run core work off the GUI thread, with progress, and never an unhandled exception.

Every long-running core function takes ``progress(fraction, message)``. A
:class:`TaskRunner` calls such a function on a worker thread (superqt's / napari's
``FunctionWorker`` on the global ``QThreadPool``), forwards its progress to the GUI
thread through a queued Qt signal, shows it in a progress bar and a status line of the
widget and in napari's activity dock, and hands the result (or the error) to callbacks
that run on the GUI thread::

    runner = TaskRunner(progress_bar=self.progress_bar, status=self.status)
    runner.start(
        partial(run_pipeline, volume, params),  # called as fn(progress=callback)
        on_done=self._show_result,               # GUI thread, gets the return value
        description="Preprocessing",
    )

Tests can run the work inline (synchronously, same thread) by setting ``runner.inline =
True`` or the module flag :data:`RUN_INLINE`; with a real thread they wait with
``qtbot.waitUntil(lambda: not runner.busy)``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject, Signal

__all__ = ["RUN_INLINE", "StatusLine", "TaskRunner", "error_message", "notify"]

#: Run every :class:`TaskRunner` inline (same thread), e.g. in tests. A runner's own
#: ``inline`` attribute (when not None) takes precedence.
RUN_INLINE: bool = False

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


class _Relay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued connection)."""

    progress = Signal(float, str)


class TaskRunner(QObject):
    """Runs one job at a time on a worker thread and reports to the widget.

    Parameters
    ----------
    progress_bar:
        A magicgui ``ProgressBar`` (0..100) or None.
    status:
        A :class:`StatusLine` or None.
    inline:
        True to run on the calling thread (tests); None follows :data:`RUN_INLINE`.

    Attributes: ``busy`` (a job is running), ``last_error`` (exception of the last job
    or None), ``last_message`` (last progress message), ``progress_log`` (list of
    (fraction, message) seen by the GUI thread for the current job), ``worker`` (the
    current superqt worker, None inline).
    """

    #: (fraction, message) on the GUI thread, for widgets that want more than the bar.
    progressed = Signal(float, str)
    #: Emitted with the result after ``on_done`` ran without error.
    succeeded = Signal(object)
    #: Emitted with the exception after a job (or its ``on_done``) failed.
    failed = Signal(object)

    def __init__(
        self,
        progress_bar: Any = None,
        status: StatusLine | None = None,
        inline: bool | None = None,
        activity_dock: bool = True,
    ):
        super().__init__()
        self.progress_bar = progress_bar
        self.status = status
        self.inline = inline
        self.activity_dock = activity_dock
        self.busy = False
        self.last_error: BaseException | None = None
        self.last_message = ""
        self.progress_log: list[tuple[float, str]] = []
        self.worker: Any = None
        self._pbar: Any = None
        self._description = ""
        self._t0 = 0.0
        self._relay = _Relay()
        self._relay.progress.connect(self._on_progress)

    # -- public API ------------------------------------------------------------------
    @property
    def runs_inline(self) -> bool:
        return RUN_INLINE if self.inline is None else bool(self.inline)

    def start(
        self,
        fn: Callable[..., Any],
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        description: str = "Working",
        pass_progress: bool = True,
    ) -> bool:
        """Run ``fn(progress=callback)`` (or ``fn()`` when ``pass_progress`` is False).

        ``on_done(result)`` and ``on_error(exc)`` run on the GUI thread; without
        ``on_error`` an error shows in the status line and as a napari notification.
        Returns False (and does nothing) while another job is running.
        """
        if self.busy:
            return False
        self.busy = True
        self.last_error = None
        self.last_message = ""
        self.progress_log = []
        self._description = description
        self._t0 = time.perf_counter()
        self._begin_progress(description)

        def call() -> Any:
            if pass_progress:
                return fn(progress=self._emit_progress)
            return fn()

        if self.runs_inline:
            try:
                result = call()
            except Exception as exc:
                self._finish_error(exc, on_error)
            else:
                self._finish_ok(result, on_done, on_error)
            return True

        from superqt.utils import create_worker

        worker = create_worker(call, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda result: self._finish_ok(result, on_done, on_error))
        worker.errored.connect(lambda exc: self._finish_error(exc, on_error))
        self.worker = worker
        worker.start()
        return True

    def elapsed(self) -> float:
        """Seconds since the current (or last) job started."""
        return time.perf_counter() - self._t0

    # -- progress ----------------------------------------------------------------------
    def _emit_progress(self, fraction: float, message: str) -> None:
        # Called on the worker thread (or inline): hand over to the GUI thread.
        if self.runs_inline:
            self._on_progress(float(fraction), str(message))
        else:
            self._relay.progress.emit(float(fraction), str(message))

    def _begin_progress(self, description: str) -> None:
        if self.progress_bar is not None:
            self.progress_bar.value = 0
            self.progress_bar.visible = True
        if self.status is not None:
            self.status.set(f"{description}…", "busy")
        if self.activity_dock and not self.runs_inline:
            try:
                from napari.utils import progress

                self._pbar = progress(total=100, desc=description)
            except Exception:
                self._pbar = None

    def _on_progress(self, fraction: float, message: str) -> None:
        if not self.busy:
            return
        self.progress_log.append((fraction, message))
        self.last_message = message
        pct = round(100 * min(1.0, max(0.0, fraction)))
        pbar = self._pbar
        try:
            if self.progress_bar is not None:
                self.progress_bar.value = pct
            if self.status is not None and message:
                self.status.set(f"{self._description}: {message}", "busy")
            if pbar is not None:
                delta = pct - pbar.n
                if delta > 0:
                    pbar.update(delta)
                if message:
                    pbar.set_description(f"{self._description}: {message}")
            self.progressed.emit(fraction, message)
        except Exception:  # e.g. the widget was deleted while the job ran
            pass

    def _end_progress(self) -> None:
        self.busy = False
        self.worker = None
        if self._pbar is not None:
            try:
                self._pbar.close()
            except Exception:
                pass
            self._pbar = None
        try:
            if self.progress_bar is not None:
                self.progress_bar.value = 100 if self.last_error is None else 0
        except RuntimeError:
            pass

    # -- completion --------------------------------------------------------------------
    def _finish_ok(
        self,
        result: Any,
        on_done: Callable[[Any], None] | None,
        on_error: Callable[[BaseException], None] | None,
    ) -> None:
        self._end_progress()
        if on_done is None:
            if self.status is not None:
                self.status.set(f"{self._description}: done in {self.elapsed():.1f} s", "ok")
            self._emit(self.succeeded, result)
            return
        try:
            on_done(result)
        except Exception as exc:  # a bug in showing the result must not escape either
            self._finish_error(exc, on_error)
            return
        self._emit(self.succeeded, result)

    def _finish_error(
        self, exc: BaseException, on_error: Callable[[BaseException], None] | None
    ) -> None:
        self.last_error = exc
        self._end_progress()
        if not isinstance(exc, (ValueError, OSError)):
            # Unexpected: keep the traceback in the terminal for a bug report.
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        if on_error is not None:
            try:
                on_error(exc)
                self._emit(self.failed, exc)
                return
            except Exception as exc2:
                exc = exc2
        msg = f"{self._description} failed: {error_message(exc)}"
        try:
            if self.status is not None:
                self.status.set(msg, "error")
        except RuntimeError:
            pass
        notify(msg, "error")
        self._emit(self.failed, exc)

    def _emit(self, signal: Any, value: Any) -> None:
        try:
            signal.emit(value)
        except Exception:  # a listener's bug must not escape into Qt
            traceback.print_exc()
