"""The error of reading a CT or a label map, and SimpleITK's reason in short."""

from __future__ import annotations

__all__ = ["CTReadError", "sitk_reason"]


class CTReadError(ValueError):
    """A file or folder could not be read as a 3D CT volume; the message says why."""


def sitk_reason(e: Exception) -> str:
    """The useful sentence of a SimpleITK error (its last line)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__
