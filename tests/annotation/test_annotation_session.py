"""The annotation session (no Qt): project, keys, saves with history, import / export;
and the controllers below the widgets import no Qt, napari or torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_vertebra.annotation.session import AnnotationSession, drop_small_polygons
from napari_vertebra.annotation.types import AnnotatedImage, VertebraAnnotation

SQUARE = np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0], [30.0, 10.0]])
MIP = np.linspace(0.0, 1500.0, 60 * 40, dtype=np.float32).reshape(60, 40)


def test_save_undo_and_events(tmp_path):
    session = AnnotationSession()
    projects, saves = [], []
    session.project_changed.connect(projects.append)
    session.saved.connect(lambda key, n, stamp: saves.append((key, n, stamp)))
    with pytest.raises(ValueError, match="no project"):
        session.save("k", [])
    session.open(tmp_path / "p")
    assert projects[-1] is session.project
    with pytest.raises(ValueError, match="does not hold"):
        session.save("k", [VertebraAnnotation(13, [SQUARE])])  # no MIP to store
    l1, l2 = VertebraAnnotation(13, [SQUARE]), VertebraAnnotation(14, [SQUARE + 30])
    stamp = session.save("k", [l1], "draw L1", image=MIP, scan="case1")
    session.save("k", [l1, l2], "draw L2")
    assert [s[1] for s in saves] == [1, 2] and saves[0][2] == stamp == session.last_saved
    assert session.list_images() == ["k"] and "k" in session
    assert [a.name for a in session.load("k")] == ["L1", "L2"]
    assert [a.name for a in session.undo("k")] == ["L1"]
    assert session.history("k").redo_label == "draw L2"
    session.close()
    assert projects[-1] is None and session.load("k") == []
    session.open(tmp_path / "p")  # a restart: the history is on disk
    assert [a.name for a in session.load("k")] == ["L1"]
    assert [a.name for a in session.redo("k")] == ["L1", "L2"]


def test_keys_of_mips(tmp_path):
    session = AnnotationSession()
    session.open(tmp_path / "p")
    meta = {"source_path": "/data/case 7.nii.gz"}
    assert session.key_for("MIP case", meta, (60, 40)) == "case_7_60x40"
    assert session.key_for("MIP case", {"project_key": "mine"}, (60, 40)) == "mine"
    session.save("MIP_stored", [], image=MIP)
    assert session.key_for("MIP stored", {}, (60, 40)) == "MIP_stored"
    assert session.scan_for("MIP x", {"mip_of": "lumbar CT"}) == "lumbar_CT"


def test_import_fills_the_matching_mip_and_stores_the_others(tmp_path):
    from napari_vertebra.annotation.coco import write_coco

    images = [
        AnnotatedImage("cur.png", 60, 40, [VertebraAnnotation(13, [SQUARE])], MIP, "a"),
        AnnotatedImage(
            "other.png", 60, 40, [VertebraAnnotation(15, [SQUARE])], MIP, "b",
            meta={"spacing_mm": 0.8},
        ),
    ]  # fmt: skip
    path = write_coco(images, tmp_path / "coco")
    session = AnnotationSession()
    session.open(tmp_path / "p")
    got = session.import_file(path, "cur", (60, 40))
    assert got.match is not None and got.match.annotations[0].name == "L1"
    assert got.stored == 1 and got.errors == []
    assert [a.name for a in session.load("other")] == ["L3"]
    assert session.project.image("other", False).meta["spacing_mm"] == 0.8  # kept for training
    assert "cur" not in session  # the caller shows the match (and saves it)


def test_a_later_save_fills_the_meta_an_image_lacks_and_never_overwrites(tmp_path):
    session = AnnotationSession()
    session.open(tmp_path / "p")
    session.save("k", [], image=MIP, meta={"layer": "MIP k"})
    session.save("k", [], meta={"layer": "renamed", "spacing_mm": 0.8})
    session.open(tmp_path / "p")  # from disk
    assert session.project.image("k", False).meta["spacing_mm"] == 0.8
    assert session.project.image("k", False).meta["layer"] == "MIP k"


def test_export_leaves_out_polygons_of_fewer_than_3_points(tmp_path):
    session = AnnotationSession()
    session.open(tmp_path / "p")
    thin = VertebraAnnotation(14, [SQUARE[:2]], score=0.8, source="model")
    session.save("k", [VertebraAnnotation(13, [SQUARE], source="3D labels"), thin], image=MIP)
    path, skipped = session.export_coco(tmp_path / "out")
    assert skipped == 1
    coco = json.loads(path.read_text(encoding="utf-8"))
    assert len(coco["annotations"]) == 1
    im = AnnotatedImage("x", 1, 1, [VertebraAnnotation(13, [SQUARE], 0.5, "model")])
    assert drop_small_polygons([im]) == 0 and im.annotations[0].source == "model"


def test_controllers_import_no_qt_napari_or_torch():
    """Every controller below the widgets: the annotation package (its session among
    them), the training run and the widgets' Qt-free helpers."""
    import importlib.util
    import pkgutil

    import napari_vertebra.annotation as annotation

    modules = [
        f"napari_vertebra.annotation.{m.name}" for m in pkgutil.iter_modules(annotation.__path__)
    ]
    assert "napari_vertebra.annotation.session" in modules
    modules += [
        "napari_vertebra.model.predict_jobs",
        "napari_vertebra.core.box_outline",
        "napari_vertebra.core.labels",
        "napari_vertebra.core.pipeline",
    ]
    if importlib.util.find_spec("napari_vertebra.model.run") is not None:
        modules.append("napari_vertebra.model.run")
    code = (
        f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}];"
        "bad = [m for m in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', "
        "'magicgui', 'torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
