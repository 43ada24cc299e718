"""Run core work off the GUI thread, with progress, and never an unhandled exception.

Every long-running core function takes ``progress(fraction, message)``. A
:class:`TaskRunner` runs such a function as a generator on a superqt ``GeneratorWorker``
(``create_worker``, the global ``QThreadPool``): the function's progress callback hands
each (fraction, message) to the worker's ``yielded`` signal, which carries it to the GUI
thread, as every yield of a generator worker does. There the widget's own progress bar
and status line show it (napari's activity dock is not used: one bar per job), and the
result (or the error) goes to callbacks that run on the GUI thread::

    runner = TaskRunner(progress_bar=self.progress_bar, status=self.status)
    runner.start(
        partial(run_pipeline, volume, params),  # called as fn(progress=callback)
        on_done=self._show_result,               # GUI thread, gets the return value
        description="Preprocessing",
    )

Tests can run the work inline (synchronously, same thread, the same generator) by setting
``runner.inline = True`` or the module flag :data:`RUN_INLINE`; with a real thread they
wait with ``qtbot.waitUntil(lambda: not runner.busy)``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from typing import Any

from qtpy.QtCore import QObject, Signal

from ._status import StatusLine, error_message, notify

__all__ = ["RUN_INLINE", "TaskRunner"]

#: Run every :class:`TaskRunner` inline (same thread), e.g. in tests. A runner's own
#: ``inline`` attribute (when not None) takes precedence.
RUN_INLINE: bool = False

#: (fraction in [0, 1], message): one progress report.
Progress = tuple[float, str]


@dataclass
class _Outcome:
    """How a job ended: its result, or the exception it raised."""

    result: Any = None
    error: BaseException | None = None


def _job(
    fn: Callable[..., Any], pass_progress: bool, report: Callable[[Progress], None]
) -> Generator[Progress, None, _Outcome]:
    """The job as the worker's generator: yields its start (0, ""), then runs ``fn``
    (``fn(progress=...)`` when ``pass_progress``) whose progress callback hands each
    report to ``report`` (the worker's ``yielded`` signal). Returns the :class:`_Outcome`:
    an exception is returned, not raised (superqt drops a RuntimeError that a generator
    raises, and the runner would wait forever)."""
    yield 0.0, ""
    try:
        if pass_progress:
            return _Outcome(fn(progress=lambda f, m: report((float(f), str(m)))))
        return _Outcome(fn())
    except Exception as exc:
        return _Outcome(error=exc)


def _drive(gen: Generator[Progress, None, _Outcome], on_progress: Callable) -> _Outcome:
    """Run ``gen`` to its end on this thread, each yield to ``on_progress``."""
    while True:
        try:
            on_progress(next(gen))
        except StopIteration as stop:
            return stop.value


class TaskRunner(QObject):
    """Runs one job at a time on a worker thread and reports to the widget.

    Parameters
    ----------
    progress_bar:
        A magicgui ``ProgressBar`` (0..100) or None.
    status:
        A :class:`~._status.StatusLine` or None.
    inline:
        True to run on the calling thread (tests); None follows :data:`RUN_INLINE`.
    owner:
        The widget the callbacks belong to: once it is deleted (its viewer closed while
        the job ran), the job's end is dropped silently, never a traceback.

    Attributes: ``busy`` (a job is running), ``last_error`` (exception of the last job
    or None), ``last_message`` (last progress message), ``progress_log`` (list of
    (fraction, message) seen by the GUI thread for the current job), ``worker`` (the
    current superqt worker, None inline).
    """

    #: Emitted with the result after ``on_done`` ran without error.
    succeeded = Signal(object)
    #: Emitted with the exception after a job (or its ``on_done``) failed.
    failed = Signal(object)

    def __init__(
        self,
        progress_bar: Any = None,
        status: StatusLine | None = None,
        inline: bool | None = None,
        owner: QObject | None = None,
    ):
        super().__init__()
        self._owner = owner
        self.progress_bar = progress_bar
        self.status = status
        self.inline = inline
        self.busy = False
        self.last_error: BaseException | None = None
        self.last_message = ""
        self.progress_log: list[Progress] = []
        self.worker: Any = None
        self._description = ""
        self._t0 = 0.0

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
        self._begin(description)
        finish = partial(self._finish, on_done=on_done, on_error=on_error)
        if self.runs_inline:
            report = self._on_progress
            finish(_drive(_job(fn, pass_progress, report), report))
            return True

        from superqt.utils import create_worker

        def report(item: Progress) -> None:  # on the worker thread
            worker.yielded.emit(item)

        worker = create_worker(
            _job, fn, pass_progress, report, _start_thread=False, _ignore_errors=True
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(finish)
        worker.errored.connect(lambda exc: self._finish_error(exc, on_error))
        self.worker = worker
        worker.start()
        return True

    def elapsed(self) -> float:
        """Seconds since the current (or last) job started."""
        return time.perf_counter() - self._t0

    # -- progress (GUI thread) -----------------------------------------------------------
    def _begin(self, description: str) -> None:
        self.busy = True
        self.last_error = None
        self.last_message = ""
        self.progress_log = []
        self._description = description
        self._t0 = time.perf_counter()
        if self.progress_bar is not None:
            self.progress_bar.value = 0
            self.progress_bar.visible = True
        if self.status is not None:
            self.status.set(f"{description}…", "busy")

    def _on_progress(self, item: Progress) -> None:
        if not self.busy:
            return
        fraction, message = item
        self.progress_log.append((fraction, message))
        self.last_message = message
        try:
            if self.progress_bar is not None:
                self.progress_bar.value = round(100 * min(1.0, max(0.0, fraction)))
            if self.status is not None and message:
                self.status.set(f"{self._description}: {message}", "busy")
        except Exception:  # e.g. the widget was deleted while the job ran
            pass

    def _end_progress(self) -> None:
        self.busy = False
        self.worker = None
        try:
            if self.progress_bar is not None:
                self.progress_bar.value = 100 if self.last_error is None else 0
        except RuntimeError:
            pass

    # -- completion (GUI thread) ---------------------------------------------------------
    def _finish(
        self,
        outcome: _Outcome,
        on_done: Callable[[Any], None] | None,
        on_error: Callable[[BaseException], None] | None,
    ) -> None:
        if not self._owner_alive():
            self.busy, self.worker = False, None
            return
        if outcome.error is not None:
            self._finish_error(outcome.error, on_error)
            return
        self._end_progress()
        if on_done is None:
            if self.status is not None:
                self.status.set(f"{self._description}: done in {self.elapsed():.1f} s", "ok")
            self._emit(self.succeeded, outcome.result)
            return
        try:
            on_done(outcome.result)
        except Exception as exc:  # a bug in showing the result must not escape either
            self._finish_error(exc, on_error)
            return
        self._emit(self.succeeded, outcome.result)

    def _owner_alive(self) -> bool:
        """False once the owner widget's Qt object is deleted."""
        if self._owner is None:
            return True
        try:
            self._owner.objectName()
        except RuntimeError:  # "wrapped C/C++ object ... has been deleted"
            return False
        return True

    def _finish_error(
        self, exc: BaseException, on_error: Callable[[BaseException], None] | None
    ) -> None:
        if not self._owner_alive():
            self.busy, self.worker = False, None
            return
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
