"""The whole loop in napari, on the bundled lumbar CT: preprocess, polygons from the 3D
labels, train one short epoch in the Train widget (a real `napari-vertebra train`
process on the project's dataset), predict with the checkpoint it wrote, accept two
vertebrae in the Review widget and find them as polygons of the project.

The model is tiny and trained for one step, so its predictions are poor and its scores
low: the Predict widget's minimum score is set to 0 (the widget keeps every detection
the model returns, up to box_detections_per_img). What the test checks is the loop and
the responsiveness of the viewer, not the model's accuracy (tests/model does that).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.annotation.polygons import dice, mask_outline, rasterize

pytestmark = [pytest.mark.gui, pytest.mark.torch, pytest.mark.slow]


def test_preprocess_train_predict_review(
    make_napari_viewer, qtbot, tmp_path, thread_spy, gap_meter
):
    from widget_helpers import SMOKE, TINY

    from napari_vertebra.widgets import predict as predict_module
    from napari_vertebra.widgets import train as train_module

    thread_spy(predict_module, "predict_job")
    thread_spy(train_module, "export_project_dataset")

    from napari_vertebra.launch import dock_widgets
    from napari_vertebra.widgets._sample import CT_NAME, LABELS_NAME
    from napari_vertebra.widgets._train_form import SOURCE_PROJECT

    viewer = make_napari_viewer()
    widgets = dock_widgets(viewer, project=tmp_path / "project")
    pre, ann = widgets["Preprocess CT"], widgets["Annotate vertebrae"]
    train, predict, review = (
        widgets["Train model"], widgets["Predict vertebrae"], widgets["Review predictions"],
    )  # fmt: skip

    # 1. preprocess the sample CT with its labels, 2. polygons from the 3D labels
    viewer.open_sample("napari-vertebra", "lumbar_ct")
    pre.refresh_choices()
    pre.ct_layer.value = viewer.layers[CT_NAME]
    pre.labels_layer.value = viewer.layers[LABELS_NAME]
    assert pre.run()
    qtbot.waitUntil(lambda: not pre.runner.busy, timeout=120_000)
    mip = pre.mip_layer()
    assert mip is not None, pre.status.value
    ann.refresh_choices()
    ann.mip_layer.value = mip
    assert ann.labels_from_3d()
    qtbot.waitUntil(lambda: not ann.runner.busy, timeout=120_000)
    key = ann.image_key.value
    truth = ann.project.load(key)
    assert len(truth) >= 5, ann.status.value

    # 3. train one short epoch on the open project, in a real subprocess
    train.source.value = SOURCE_PROJECT
    train.config_file.value = str(SMOKE)
    train.run_folder.value = str(tmp_path / "run")
    train.epochs.value = 1
    train.device.value = "cpu"
    train.config_overrides = dict(TINY)
    gaps = gap_meter()
    with qtbot.waitSignal(train.finished, timeout=240_000) as finished:
        assert train.start(), train.status.value
    run = tmp_path / "run"
    assert finished.args == [0], (run / "train.out").read_text(encoding="utf-8")[-2000:]
    assert (run / "dataset" / "train" / "annotations.json").is_file()
    assert train.run.progress.completed_epochs == 1
    assert train.selected_checkpoint() == run / "best.pt"
    train_gap = gaps.max_gap

    # 4. predict with that checkpoint ("Use for prediction"), every detection shown
    train.use_checkpoint()
    assert predict.checkpoint.value == run / "best.pt"
    predict.set_image_layer(mip)
    predict.min_score.value = 0.0
    gaps = gap_meter()
    assert predict.run()
    qtbot.waitUntil(lambda: not predict.busy, timeout=180_000)
    gaps.stop()
    predict_gap = gaps.max_gap
    assert predict.runner.last_error is None, predict.status.value
    pred = predict.prediction
    assert len(pred) >= 2, predict.summary.value
    assert predict.labels_layer.data.shape == mip.data.shape

    # 5. review: accept two vertebrae -> polygons of the project (replacing the ones
    # from the 3D labels: the answer to Review's question)
    review.ask = lambda *_: "replace"
    assert review.table.rowCount() == len(pred)
    review.select(0)
    assert review.accept()
    assert review.accept()  # the next one
    assert review.states[:2] == ["accepted", "accepted"]
    stored = {a.class_id: a for a in ann.project.load(key)}
    for i in (0, 1):
        # the stored polygon is the one outline of the predicted mask (a 1-step model's
        # masks are ragged and fragmented, so compare with the outline, not the raw mask)
        a = stored[int(pred.classes[i])]
        assert len(a.polygons) == 1
        outline = rasterize([mask_outline(pred.masks[i])], pred.shape)
        assert dice(rasterize(a.polygons, pred.shape), outline) > 0.99
    # the other vertebrae from the 3D labels are still there
    others = {a.class_id for a in truth} - {int(c) for c in pred.classes[:2]}
    assert others <= set(stored)
    print(
        f"loop: max event-loop gap while training {train_gap:.3f} s, while predicting "
        f"{predict_gap:.3f} s; {len(pred)} vertebrae predicted"
    )
    # the gaps depend on the machine's load (benchmarks/widget_gaps.py measures them); what
    # the widgets control is that the work runs off the GUI thread (training: a subprocess)
    assert thread_spy.ran_off_gui_thread("export_project_dataset")
    assert thread_spy.ran_off_gui_thread("predict_job")
    assert np.isfinite(train.run.progress.epoch_losses["loss"]).all()
