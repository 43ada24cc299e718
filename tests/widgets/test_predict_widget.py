"""The "Predict vertebrae" widget: a checkpoint on a MIP or a CT, score slider, back to 3D."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from napari_vertebra.core.labels import class_colours_rgba
from napari_vertebra.model.starter import starter_checkpoint
from napari_vertebra.widgets.predict import PredictWidget

pytestmark = [pytest.mark.gui, pytest.mark.torch]

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def make_random_checkpoint(path):
    """Save a checkpoint of an untrained small Mask R-CNN at ``path`` (fast to make; its
    detections are arbitrary, which is all the widget tests need)."""
    from napari_vertebra.model.predict_jobs import avoid_triton

    avoid_triton()  # as the widget does: Triton after napari's OpenGL crashes (llvmpipe)
    import torch

    from napari_vertebra.model.build import build_model, save_checkpoint
    from napari_vertebra.model.config import load_config

    cfg = load_config("smoke", {"min_size": 192, "max_size": 256})
    torch.manual_seed(0)
    model = build_model(cfg)
    save_checkpoint(path, model=model.state_dict(), config=cfg, epoch=0)
    return path


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "random.pt")


def add_mip(viewer, result, with_result=True):
    """The MIP and its ground-truth labels, as 'Preprocess CT' shows them."""
    from napari_vertebra.core.pipeline import mip_labels

    meta = {"pipeline_result": result} if with_result else {}
    layer = viewer.add_image(result.mip, name="MIP lumbar CT", colormap="gray", metadata=meta)
    viewer.add_labels(mip_labels(result), name="MIP labels lumbar CT", opacity=0.3)
    return layer


def test_predict_slider_and_back_to_3d(
    make_napari_viewer, sample_result, random_checkpoint, qtbot, thread_spy, gap_meter
):
    from napari_vertebra.widgets import predict as predict_module

    thread_spy(predict_module, "predict_job")
    thread_spy(predict_module, "back_to_3d_job")
    viewer = make_napari_viewer()
    mip_layer = add_mip(viewer, sample_result)
    w = PredictWidget(viewer)
    starter = starter_checkpoint()
    if starter is not None:  # the shipped starter model is preselected
        assert Path(str(w.checkpoint.value)) == starter.resolve()
    w.checkpoint.value = None
    assert not w.run()  # no checkpoint
    assert "checkpoint" in w.status.value
    w.set_checkpoint(random_checkpoint)
    w.set_image_layer(mip_layer)
    w.min_score.value = 0.0
    gaps = gap_meter()
    assert w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    gaps.stop()
    predict_gap = gaps.max_gap
    assert w.runner.last_error is None, w.status.value
    raw = w.raw
    assert raw is not None and raw.n_raw > 0
    pred = w.prediction
    assert 0 < len(pred) <= 17
    assert set(np.unique(pred.classes)) <= set(range(1, 18))
    assert list(pred.classes) == sorted(pred.classes)  # anatomical order, top to bottom
    # the level confidence of the naming is shown under the list (issue 11)
    assert pred.levels is not None and pred.level_summary
    assert f"Levels: {pred.level_summary}" in w.summary.value
    # a long summary wraps: it never widens the panel past the dock (controls cut off)
    assert w._inner.minimumSizeHint().width() < 400

    labels = w.labels_layer
    assert labels.data.shape == sample_result.mip.shape
    assert np.array_equal(labels.data, pred.label_image())
    colours = class_colours_rgba()
    for c in np.unique(pred.classes):
        assert np.allclose(labels.colormap.map(np.array([c]))[0], colours[int(c)], atol=1e-3)
    boxes = w.boxes_layer
    assert len(boxes.data) == len(pred)
    texts = list(boxes.features["label"])
    assert all(re.fullmatch(r"(T|L)\d{1,2} \d\.\d\d", t) for t in texts)
    assert texts[0].split()[0] == pred.names[0]

    # the slider filters the kept detections; it does not predict again
    # a threshold on the slider's 0.01 grid that keeps some but not all
    steps = np.round(np.arange(0.0, 1.0, 0.01), 2)
    kept = np.array([(pred.scores >= t).sum() for t in steps])
    assert ((kept > 0) & (kept < len(pred))).any(), pred.scores
    w.min_score.value = float(steps[(kept > 0) & (kept < len(pred))][0])
    assert w.raw is raw and not w.runner.busy
    assert len(w.prediction) < len(pred)
    assert np.all(w.prediction.scores >= w.min_score.value)
    assert len(w.boxes_layer.data) == len(w.prediction)
    w.min_score.value = 1.0
    assert len(w.prediction) == 0 and not w.labels_layer.data.any()
    assert len(w.boxes_layer.data) == 0
    w.min_score.value = 0.0
    assert len(w.prediction) == len(pred)

    # back to 3D: the labels lie on the resampled grid, behind their MIP pixels
    gaps = gap_meter()
    assert w.show_in_3d()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    gaps.stop()
    vol_layer = w.volume_layer
    vol = np.asarray(vol_layer.data)
    r = sample_result
    assert vol.shape == r.resampled.shape
    assert np.allclose(vol_layer.scale, r.resampled.spacing)
    assert set(np.unique(vol)) - {0} <= set(pred.classes.tolist())
    (z0, z1), (y0, y1), (x0, x1) = r.crop_box
    crop = vol[z0:z1, y0:y1, x0:x1][::-1]  # rows superior first, like the MIP
    lab = pred.label_image()
    rows, cols = np.nonzero((lab > 0) & (r.mip > 0))
    behind = crop[rows, cols, r.mip_argmax_x[rows, cols]]
    assert np.array_equal(behind, lab[rows, cols])  # the brightest voxel gets the label
    assert not vol[:z0].any() and not vol[z1:].any()  # nothing outside the crop
    # the figure depends on the machine's load (benchmarks/widget_gaps.py measures it);
    # what the widget controls is that the work runs off the GUI thread
    print(f"event-loop gaps: predict {predict_gap:.3f} s, show in 3D {gaps.max_gap:.3f} s")
    assert thread_spy.ran_off_gui_thread("predict_job")
    assert thread_spy.ran_off_gui_thread("back_to_3d_job")


def test_predict_on_a_ct_preprocesses_first(make_napari_viewer, random_checkpoint, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vertebra", "lumbar_ct")
    w = PredictWidget(viewer, checkpoint=str(random_checkpoint))
    w.set_image_layer(viewer.layers["lumbar CT"])
    w.min_score.value = 0.0
    assert w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    assert w.runner.last_error is None, w.status.value
    mip = viewer.layers["MIP lumbar CT"]
    assert mip.ndim == 2 and mip.data.shape == w.raw.result.mip.shape
    assert w.labels_layer.data.shape == mip.data.shape
    assert w.show_in_3d()  # the CT's pipeline result is known
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert w.volume_layer.data.shape == w.raw.result.resampled.shape


def test_show_in_3d_needs_the_ct(make_napari_viewer, sample_result, random_checkpoint, qtbot):
    viewer = make_napari_viewer()
    layer = add_mip(viewer, sample_result, with_result=False)
    w = PredictWidget(viewer, checkpoint=str(random_checkpoint))
    assert not w.show_in_3d() and "predict first" in w.status.value
    w.set_image_layer(layer)
    w.min_score.value = 0.0
    assert w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    assert not w.show_in_3d()
    assert "needs the CT" in w.status.value and w.status.level == "error"


def test_launch_with_a_checkpoint_predicts_on_the_mip(
    make_napari_viewer, random_checkpoint, qtbot, tmp_path
):
    """`python -m napari_vertebra.launch --checkpoint PATH`: the demo's MIP is predicted."""
    from napari_vertebra import launch

    viewer = make_napari_viewer()
    widgets = launch.dock_widgets(viewer, project=tmp_path / "proj", checkpoint=random_checkpoint)
    predict = widgets["Predict vertebrae"]
    assert predict.checkpoint.value == random_checkpoint
    assert {"Train model", "Review predictions"} <= set(widgets)
    ready = []
    launch.start_demo(viewer, widgets, on_ready=lambda: ready.append(True))
    qtbot.waitUntil(lambda: predict.raw is not None and not predict.busy, timeout=180_000)
    mip = widgets["Preprocess CT"].mip_layer()
    assert predict.raw.image_name == mip.name
    assert predict.labels_layer.data.shape == mip.data.shape
    qtbot.waitUntil(lambda: bool(ready), timeout=120_000)


def _docked_predict(make_napari_viewer, sample_result, checkpoint):
    """A shown viewer with Predict and Review docked (as `make run` has them) on the MIP."""
    from napari_vertebra.widgets.review import ReviewWidget

    viewer = make_napari_viewer(show=True)
    mip = add_mip(viewer, sample_result)
    w = PredictWidget(viewer, checkpoint=str(checkpoint))
    viewer.window.add_dock_widget(w, name="Predict vertebrae")
    viewer.window.add_dock_widget(ReviewWidget(viewer), name="Review predictions", tabify=True)
    w.set_image_layer(mip)
    w.min_score.value = 0.0
    return viewer, w


def test_closing_the_viewer_as_the_prediction_arrives_raises_nothing(
    make_napari_viewer, sample_result, random_checkpoint, qtbot, capfd
):
    """Closed while the result is being shown (the boxes come a turn later): the deferred
    step went to a deleted QSlider ("wrapped C/C++ object ... has been deleted")."""
    from qtpy.QtCore import Qt

    viewer, w = _docked_predict(make_napari_viewer, sample_result, random_checkpoint)
    runner = w.runner
    runner.succeeded.connect(lambda *_: viewer.close())  # the user closes right then
    qtbot.mouseClick(w.predict_button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not runner.busy, timeout=120_000)
    qtbot.wait(300)  # the deferred steps' turn (pytest-qt fails on their exceptions)
    assert "Traceback" not in capfd.readouterr().err


def test_closing_the_viewer_while_predicting_raises_nothing(
    make_napari_viewer, sample_result, random_checkpoint, qtbot, capfd
):
    """The model's answer reaches a widget whose viewer is gone: dropped, no traceback."""
    from qtpy.QtCore import Qt

    viewer, w = _docked_predict(make_napari_viewer, sample_result, random_checkpoint)
    runner = w.runner
    qtbot.mouseClick(w.predict_button.native, Qt.MouseButton.LeftButton)
    assert runner.busy
    viewer.close()
    qtbot.waitUntil(lambda: not runner.busy, timeout=120_000)
    qtbot.wait(300)
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.skipif(starter_checkpoint() is None, reason="this checkout ships no starter.pt")
def test_a_mip_is_predicted_at_the_pixel_spacing_it_records(
    make_napari_viewer, sample_result, qtbot
):
    """The starter reads images at 1 px/mm: a 2 mm MIP that records its spacing (as an
    imported COCO file gives it) is predicted at 2 mm; one that records none is read as
    1 mm, and the status says so."""
    from qtpy.QtCore import Qt
    from skimage.transform import rescale

    half = rescale(sample_result.mip, 0.5, order=1, preserve_range=True, anti_aliasing=True)
    viewer = make_napari_viewer()
    layer = viewer.add_image(
        half.astype(np.float32), name="MIP 2 mm", metadata={"spacing_mm": 2.0}
    )
    w = PredictWidget(viewer)  # the starter, preselected
    w.set_image_layer(layer)

    def predict() -> None:
        before = w.raw
        qtbot.mouseClick(w.predict_button.native, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(
            lambda: not w.busy and w.raw is not before and not w._displaying, timeout=120_000
        )
        assert w.runner.last_error is None, w.status.value

    predict()
    assert w.raw.spacing == [2.0, 2.0] and w.status.level == "ok"
    assert {"T12", "L1", "L2", "L3", "L4", "L5"} <= set(w.prediction.names)
    layer.metadata = {}  # a MIP opened as a plain picture
    predict()
    assert w.raw.spacing is None
    assert w.status.level == "warning" and "read as 1 mm per pixel" in w.status.value
