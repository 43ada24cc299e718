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


@pytest.fixture
def project_with_polygons(tmp_path, lumbar_ct_path, lumbar_labels_path) -> Path:
    """An annotation project holding the bundled sample's MIP and its polygons."""
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.annotation.project import AnnotationProject
    from napari_vertebra.core.io import read_ct, read_labels

    ct = read_ct(lumbar_ct_path)
    image = labels_to_annotations(ct, read_labels(lumbar_labels_path, like=ct), "totalsegmentator")
    project = AnnotationProject(tmp_path / "project")
    project.add_image("sample", image.image, scan="sample")
    project.save("sample", image.annotations)
    project.close()
    return tmp_path / "project"


def test_fine_tune_starts_from_the_starter_on_the_project(
    make_napari_viewer, project_with_polygons, tmp_path, qtbot, monkeypatch
):
    from qtpy.QtCore import Qt

    launched: list[tuple[Path, Path]] = []

    def fake_command(config, data, run_dir, resume=False, device=None):
        launched.append((Path(config), Path(data)))
        return [sys.executable, "-c", FAKE, str(run_dir)]

    monkeypatch.setattr(run_module, "train_command", fake_command)
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    try:
        session_for(viewer).annotation.open(project_with_polygons)
        widget.run_folder.value = str(tmp_path / "fine-tuned")
        qtbot.mouseClick(widget.fine_tune_button.native, Qt.MouseButton.LeftButton)
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
