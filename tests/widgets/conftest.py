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


@pytest.fixture
def inline_workers(monkeypatch):
    """Run every widget's TaskRunner on the calling thread (synchronous)."""
    from napari_vertebra.widgets import _threading

    monkeypatch.setattr(_threading, "RUN_INLINE", True)


@pytest.fixture(scope="session")
def sample_result():
    """The pipeline result of the bundled lumbar CT with its class-id labels (run once)."""
    from napari_vertebra.core import run_pipeline
    from napari_vertebra.core.volume import Volume
    from napari_vertebra.widgets._sample import lumbar_ct

    (ct, ct_kw, _), (lab, _, _) = lumbar_ct()
    geo = ct_kw["metadata"]["volume_geometry"]
    vol = Volume(ct, geo["spacing"], geo["origin"], geo["direction"])
    return run_pipeline(vol, labels=vol.with_array(lab))


@pytest.fixture
def thread_spy(monkeypatch):
    """``spy(module, "name")`` wraps a module-level worker function so that the test can
    assert it ran off the GUI thread: ``spy.threads["name"]`` lists, per call, whether it
    ran on the main (GUI) thread. Event-loop gaps depend on the machine's load; where the
    work runs does not."""
    import threading

    class Spy:
        def __init__(self):
            self.threads: dict[str, list[bool]] = {}

        def __call__(self, module, name):
            original = getattr(module, name)
            calls = self.threads.setdefault(name, [])

            def wrapper(*args, **kwargs):
                calls.append(threading.current_thread() is threading.main_thread())
                return original(*args, **kwargs)

            monkeypatch.setattr(module, name, wrapper)

        def ran_off_gui_thread(self, name):
            calls = self.threads.get(name, [])
            return bool(calls) and not any(calls)

    return Spy()


@pytest.fixture
def gap_meter():
    """``meter = gap_meter()`` starts a 50 ms QTimer; ``meter.stop()`` returns the largest
    interval between its ticks (s): a figure of the machine's load to print, never to
    assert (benchmarks/widget_gaps.py measures it)."""
    import time

    from qtpy.QtCore import QTimer

    class GapMeter:
        def __init__(self):
            self.max_gap = 0.0
            self._last = time.perf_counter()
            self._timer = QTimer()
            self._timer.setInterval(50)
            self._timer.timeout.connect(self._tick)
            self._timer.start()

        def _tick(self):
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - self._last)
            self._last = now

        def stop(self) -> float:
            self._timer.stop()
            return self.max_gap

    return GapMeter
