"""Shared by the screenshot and GUI benchmark scripts: wait on the event loop, shoot."""

from __future__ import annotations

import time
from pathlib import Path


def wait(cond, timeout: float = 300.0, settle: int = 20) -> None:
    """Run Qt's event loop until ``cond()`` holds (TimeoutError after ``timeout`` s), then
    ``settle`` more short turns so that what it triggered is drawn."""
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while not cond():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("timed out")
    for _ in range(settle):
        QApplication.processEvents()
        time.sleep(0.02)


def shoot(viewer, path: Path, dock: str | None = None) -> Path:
    """Save the whole window (dock ``dock`` raised first) as a 256-colour PNG."""
    from PIL import Image

    if dock is not None:
        docks = viewer.window._wrapped_dock_widgets
        # the tabs are titled with the first word ("Predict" for "Predict vertebrae")
        widget = docks.get(dock) or docks.get(dock.split()[0])
        if widget is None:
            raise KeyError(f"no dock widget {dock!r} (have: {', '.join(docks)})")
        if widget is not None:
            widget.show()
            widget.raise_()
    wait(lambda: True, settle=30)
    img = viewer.screenshot(canvas_only=False, flash=False)
    pil = Image.fromarray(img[..., :3]).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, optimize=True)
    print(f"{path}: {pil.size[0]}x{pil.size[1]}, {path.stat().st_size // 1024} KB")
    return path
