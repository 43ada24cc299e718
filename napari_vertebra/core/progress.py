"""The progress convention used by every long-running function.

Long work takes ``progress: ProgressCallback | None`` and calls it with a fraction in
[0, 1] and a short message. Widgets forward it to the GUI from their worker thread; the
command line forwards it to tqdm. ``None`` means silent.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[float, str], None]

__all__ = ["ProgressCallback", "report", "scaled"]


def report(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    """Call ``progress`` if given (fraction clipped to [0, 1])."""
    if progress is not None:
        progress(min(1.0, max(0.0, float(fraction))), message)


def scaled(
    progress: ProgressCallback | None, start: float, stop: float
) -> ProgressCallback | None:
    """A callback that maps a sub-task's [0, 1] onto [start, stop] of ``progress``."""
    if progress is None:
        return None

    def sub(fraction: float, message: str) -> None:
        report(progress, start + (stop - start) * fraction, message)

    return sub
