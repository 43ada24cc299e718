"""The "Preprocess CT" widget: runs the pipeline, shows each step, re-runs only what changed."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from napari_vertebra.core import STEPS, PreprocessParams
from napari_vertebra.widgets._sample import CT_NAME, LABELS_NAME
from napari_vertebra.widgets.preprocess import PreprocessWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def sample_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vertebra", "lumbar_ct")
    return viewer


def _dock(viewer) -> PreprocessWidget:
    widget = PreprocessWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Preprocess CT")
    widget.ct_layer.value = viewer.layers[CT_NAME]
    widget.labels_layer.value = viewer.layers[LABELS_NAME]
    return widget


def test_fields_follow_the_params_dataclass(make_napari_viewer):
    import dataclasses

    widget = PreprocessWidget(make_napari_viewer())
    names = [f.name for f in dataclasses.fields(PreprocessParams)]
    assert list(widget.param_widgets) == names
    assert widget.params() == PreprocessParams()
    widget.param_widgets["hu_min"].value = 150.0
    assert widget.params().hu_min == 150.0
    widget.set_params(PreprocessParams())
    assert widget.params() == PreprocessParams()


def test_run_shows_every_step_and_reruns_only_later_steps(sample_viewer, inline_workers):
    viewer = sample_viewer
    widget = _dock(viewer)
    assert widget.run()
    r = widget.result
    assert r is not None, widget.status.value
    assert widget.last_rerun == list(STEPS)
    names = widget.layer_names()
    mip = viewer.layers[names["mip"]]
    assert mip.ndim == 2 and mip.data.shape == r.mip.shape
    assert mip.visible and not viewer.layers[CT_NAME].visible
    canal = viewer.layers[names["canal"]]
    assert len(canal.data) == r.windowed.shape[0]
    assert canal.features["found"].to_numpy().tolist() == list(map(bool, r.canal_found))
    found_colour = canal.face_color[np.argmax(r.canal_found)]
    carried_colour = canal.face_color[np.argmin(r.canal_found)]
    assert not np.allclose(found_colour, carried_colour)
    box = viewer.layers[names["box"]]
    (z0, z1), (y0, y1), (x0, x1) = r.crop_box
    # 2D view: one rectangle per axial slice of the box
    assert len(box.data) == z1 - z0 and set(box.shape_type) == {"rectangle"}
    rects = np.concatenate([np.asarray(d) for d in box.data])
    assert rects[:, 0].min() == z0 and rects[:, 0].max() == z1 - 1
    assert rects[:, 1].min() == y0 and rects[:, 1].max() == y1 - 1
    assert rects[:, 2].min() == x0 and rects[:, 2].max() == x1 - 1
    # 3D view: the 12 edges as one path
    viewer.dims.ndisplay = 3
    assert len(box.data) == 1 and box.shape_type == ["path"]
    path = np.asarray(box.data[0])
    assert path[:, 2].min() == x0 and path[:, 2].max() == x1 - 1
    viewer.dims.ndisplay = 2
    assert len(box.data) == z1 - z0
    windowed = viewer.layers[names["windowed"]]
    np.testing.assert_allclose(windowed.scale, r.windowed.spacing)
    mip_labels = viewer.layers[names["mip_labels"]]
    assert mip_labels.data.shape == r.mip.shape
    assert {13, 17} <= set(np.unique(mip_labels.data).tolist())  # L1 .. L5 visible
    n_layers = len(viewer.layers)

    # a crop parameter: only crop and MIP re-run; layers updated in place
    widget.param_widgets["crop_margin_lr_mm"].value = 30.0
    widget.run()
    r2 = widget.result
    assert widget.last_rerun == ["crop", "mip"]
    assert "ran: crop, mip" in widget.status.value
    assert r2.canal is r.canal and r2.windowed is r.windowed
    assert r2.crop_box[2] != r.crop_box[2]
    assert len(viewer.layers) == n_layers
    rects2 = np.asarray(viewer.layers[names["box"]].data[0])
    assert rects2[:, 2].max() - rects2[:, 2].min() < path[:, 2].max() - path[:, 2].min()

    # the HU window: resample is re-used, the rest re-runs
    widget.param_widgets["hu_min"].value = 150.0
    widget.run()
    assert widget.last_rerun == ["window", "canal", "crop", "mip"]
    assert widget.result.resampled is r.resampled
    assert len(viewer.layers) == n_layers

    widget.show_volume()
    assert viewer.layers[names["windowed"]].visible and not mip.visible
    widget.show_mip()
    assert mip.visible


def test_auto_rerun_after_a_change_is_debounced(sample_viewer, qtbot, inline_workers):
    widget = _dock(sample_viewer)
    widget.debounce_ms = 50
    widget.run()
    assert widget.n_runs == 1
    widget.param_widgets["crop_margin_posterior_mm"].value = 30.0
    widget.param_widgets["crop_margin_posterior_mm"].value = 35.0
    qtbot.waitUntil(lambda: widget.n_runs == 2, timeout=5000)
    qtbot.wait(150)
    assert widget.n_runs == 2  # two quick changes, one re-run
    assert widget.last_rerun == ["crop", "mip"]
    assert widget.result.params.crop_margin_posterior_mm == 35.0


def test_the_pipeline_runs_off_the_gui_thread(sample_viewer, qtbot, thread_spy):
    """The real thread: the pipeline runs on a worker, its progress reaches the bar.

    The event-loop gap meanwhile depends on the machine's load (it is printed, and
    benchmarks/widget_gaps.py measures the widgets' gaps); where the work runs does not.
    """
    from qtpy.QtCore import QTimer

    import napari_vertebra.core as core

    thread_spy(core, "run_pipeline")
    widget = _dock(sample_viewer)
    assert not widget.runner.runs_inline
    ticks: list[tuple[float, bool]] = []
    timer = QTimer()
    timer.setInterval(50)
    timer.timeout.connect(lambda: ticks.append((time.perf_counter(), widget.runner.busy)))
    timer.start()
    assert widget.run()
    assert widget.runner.busy
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    timer.stop()
    assert widget.runner.last_error is None, widget.status.value
    assert widget.result is not None
    assert widget.layer_names()["mip"] in sample_viewer.layers
    assert len(widget.runner.progress_log) >= 3  # progress reached the GUI thread
    assert widget.progress_bar.value == 100
    assert thread_spy.ran_off_gui_thread("run_pipeline")
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(ticks) if a[1] and b[1]]
    print(f"largest event-loop gap while preprocessing: {max(gaps, default=0.0):.3f} s")


def test_a_2d_image_gives_a_message_not_an_exception(make_napari_viewer, inline_workers):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 30), np.float32), name="flat")
    widget = PreprocessWidget(viewer)
    widget.ct_layer.value = viewer.layers["flat"]
    assert widget.run() is False
    assert widget.status.level == "error"
    assert "2D" in widget.status.value
    assert widget.result is None
    # invalid parameters: also a message
    viewer.add_image(np.zeros((8, 8, 8), np.float32), name="cube")
    widget.ct_layer.value = viewer.layers["cube"]
    widget.param_widgets["hu_max"].value = 50.0  # below hu_min
    assert widget.run() is False
    assert "hu_max" in widget.status.value


def test_errors_in_the_worker_become_a_status_line(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = PreprocessWidget(viewer)

    def boom(progress=None):
        progress(0.5, "half way")
        raise ValueError("scan.nii.gz: something is wrong")

    widget.runner.start(boom, on_done=lambda r: None, description="Test")
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=10_000)
    assert isinstance(widget.runner.last_error, ValueError)
    assert widget.status.level == "error"
    assert "something is wrong" in widget.status.value


def test_warnings_become_a_notification_and_the_status_line(
    sample_viewer, inline_workers, monkeypatch
):
    """A pelvis-only part of the sample: the crop falls back, and the user is told."""
    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: shown.append(msg))
    viewer = sample_viewer
    ct = viewer.layers[CT_NAME]
    pelvis = viewer.add_image(
        np.asarray(ct.data)[:20], scale=ct.scale, translate=ct.translate, name="pelvis"
    )
    widget = PreprocessWidget(viewer)
    widget.ct_layer.value = pelvis
    widget.labels_layer.value = None
    assert widget.run()
    r = widget.result
    assert r is not None, widget.status.value
    assert r.warnings and r.decisions["crop"].startswith("fallback")
    assert widget.status.level == "warning"
    assert r.warnings[0] in widget.status.value
    assert len(shown) == len(r.warnings)
    assert all(msg.startswith("Preprocess pelvis: ") for msg in shown)
    # a re-run with the same warnings does not repeat them; changed ones are shown
    assert widget.run()
    assert len(shown) == len(r.warnings)
    widget.param_widgets["crop_margin_lr_mm"].value = 50.0
    assert widget.run()
    assert widget.result.warnings != r.warnings
    assert len(shown) == len(r.warnings) + len(widget.result.warnings)
