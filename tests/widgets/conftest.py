"""GUI tests need napari and a display (pytest-xvfb starts Xvfb).

Without a display they are skipped, except where NAPARI_VERTEBRA_REQUIRE_GUI is set
(CI), where a missing display is an error rather than a silent skip.
"""

from __future__ import annotations

import os
import shutil

import pytest

_HAVE_DISPLAY = bool(os.environ.get("DISPLAY")) or shutil.which("Xvfb") is not None


def pytest_collection_modifyitems(config, items):
    if _HAVE_DISPLAY:
        return
    if os.environ.get("NAPARI_VERTEBRA_REQUIRE_GUI"):
        raise pytest.UsageError(
            "GUI tests need Xvfb (run `make system-deps` as root); "
            "NAPARI_VERTEBRA_REQUIRE_GUI is set, so they may not be skipped"
        )
    skip = pytest.mark.skip(reason="no display and no Xvfb (run `make system-deps`)")
    for item in items:
        if "tests/widgets" in str(item.fspath):
            item.add_marker(skip)
