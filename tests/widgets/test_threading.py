"""TaskRunner: progress through the worker's ``yielded`` signal, every error reported."""

from __future__ import annotations

import threading

import pytest

from napari_vertebra.widgets._threading import TaskRunner

pytestmark = pytest.mark.gui


def _job(progress=None):
    for i in range(3):
        progress(i / 3, f"step {i}")
    return threading.current_thread() is threading.main_thread()


@pytest.mark.parametrize("inline", [False, True])
def test_progress_reaches_the_gui_thread_in_order(qtbot, inline):
    runner = TaskRunner(inline=inline)
    done = []
    assert runner.start(_job, on_done=done.append, description="Job")
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert done == [inline]  # on the calling thread only inline
    assert [m for _, m in runner.progress_log if m] == ["step 0", "step 1", "step 2"]
    assert runner.last_error is None and runner.worker is None


def test_a_runtime_error_in_the_worker_is_reported_not_lost(qtbot):
    """superqt drops a RuntimeError raised by a generator worker; the runner reports it."""
    runner = TaskRunner()
    failed = []
    runner.failed.connect(failed.append)

    def boom(progress=None):
        progress(0.5, "half way")
        raise RuntimeError("the job broke")

    assert runner.start(boom, description="Boom")
    assert not runner.start(boom)  # one job at a time
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert isinstance(runner.last_error, RuntimeError)
    assert len(failed) == 1 and failed[0] is runner.last_error
