"""Train's "Fine-tune on this project": a click starts a run from the shipped starter model
on the open project's polygons with the starter's real MIPs mixed in (the trainer is the
fake one of test_train_widget, so the test follows the widget, not a training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from test_train_widget import FAKE

from napari_vertebra.model import run as run_module
from napari_vertebra.model.starter import FINE_TUNE, replay_folder, starter_checkpoint
from napari_vertebra.widgets._session import session_for
from napari_vertebra.widgets.train import TrainWidget

pytestmark = [
    pytest.mark.gui,
    pytest.mark.torch,
    pytest.mark.skipif(starter_checkpoint() is None, reason="this checkout ships no starter.pt"),
]


@pytest.fixture(scope="module")
def sample(lumbar_ct_path, lumbar_labels_path):
    """(the bundled sample's pipeline result, its MIP with the polygons from 3D)."""
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.core import run_pipeline
    from napari_vertebra.core.io import read_ct, read_labels

    ct = read_ct(lumbar_ct_path)
    labels = read_labels(lumbar_labels_path, like=ct)
    result = run_pipeline(ct, labels=labels)
    return result, labels_to_annotations(ct, labels, "totalsegmentator", result=result)


def _project(folder: Path, sample, as_annotate_stores: bool = True) -> Path:
    """An annotation project holding the sample's MIP and its polygons, stored as
    Annotate stores a MIP of Preprocess CT (with its grid), or as a bare image."""
    from napari_vertebra.annotation.project import AnnotationProject
    from napari_vertebra.annotation.regrid import mip_grid

    result, image = sample
    meta = {"layer": "example_ct MIP", "mip_grid": mip_grid(result)}
    project = AnnotationProject(folder)
    project.add_image(
        "sample", image.image, scan="sample", meta=meta if as_annotate_stores else None
    )
    project.save("sample", image.annotations)
    project.close()
    return folder


@pytest.fixture
def project_with_polygons(tmp_path, sample) -> Path:
    return _project(tmp_path / "project", sample)


def _widget_on(project: Path, make_napari_viewer, run_dir: Path) -> TrainWidget:
    """A Train widget in a new viewer with ``project`` open and ``run_dir`` as its run."""
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    session_for(viewer).annotation.open(project)
    widget.run_folder.value = str(run_dir)
    return widget


def _click_fine_tune(widget: TrainWidget, qtbot) -> None:
    from qtpy.QtCore import Qt

    qtbot.mouseClick(widget.fine_tune_button.native, Qt.MouseButton.LeftButton)


def test_fine_tune_starts_from_the_starter_on_the_project(
    make_napari_viewer, project_with_polygons, tmp_path, qtbot, monkeypatch
):
    launched: list[tuple[Path, Path]] = []

    def fake_command(config, data, run_dir, resume=False, device=None):
        launched.append((Path(config), Path(data)))
        return [sys.executable, "-c", FAKE, str(run_dir)]

    monkeypatch.setattr(run_module, "train_command", fake_command)
    widget = _widget_on(project_with_polygons, make_napari_viewer, tmp_path / "fine-tuned")
    try:
        _click_fine_tune(widget, qtbot)
        qtbot.waitUntil(lambda: widget.running, timeout=180_000)
        config, data = launched[0]
        cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
        assert cfg["weights"] == str(starter_checkpoint().resolve())
        assert cfg["lr"] == FINE_TUNE["lr"] and cfg["class_set"] == "extended"
        train = json.loads((data / "train" / "annotations.json").read_text())["images"]
        replay = json.loads((replay_folder() / "annotations.json").read_text())["images"]
        scans = {im["scan"] for im in train}
        assert "sample" in scans and scans > {"sample"} and len(train) > len(replay)
        assert "MIPs of the starter's real scans" in widget.status.value
        (tmp_path / "fine-tuned" / "GO").write_text("")
        qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    finally:
        if widget.run is not None:
            widget.run.kill()
        widget.close_widget()


def test_fine_tune_names_a_mip_without_pixel_spacing(make_napari_viewer, tmp_path, sample, qtbot):
    project = _project(tmp_path / "project", sample, as_annotate_stores=False)
    widget = _widget_on(project, make_napari_viewer, tmp_path / "fine-tuned")
    try:
        _click_fine_tune(widget, qtbot)
        qtbot.waitUntil(lambda: "pixel spacing" in widget.status.value, timeout=180_000)
        assert "sample" in widget.status.value and not widget.running
    finally:
        widget.close_widget()
