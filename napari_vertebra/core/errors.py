"""The error of reading a CT or a label map, SimpleITK's reason in short, and its
warnings kept off stderr where the reader checks the same thing and says it clearly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import SimpleITK as sitk

__all__ = ["CTReadError", "quiet_itk", "sitk_reason"]


class CTReadError(ValueError):
    """A file or folder could not be read as a 3D CT volume; the message says why."""


def sitk_reason(e: Exception) -> str:
    """The useful sentence of a SimpleITK error (its last line)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


@contextmanager
def quiet_itk(quiet: bool = True) -> Iterator[None]:
    """SimpleITK's warnings (raw text on stderr) off inside the block when ``quiet``."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    if quiet:
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
