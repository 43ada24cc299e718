"""An annotation project that survives damaged files, a lost index, a broken undo
history and interrupted saves (the lumbar sample's MIP and its 3D-label polygons)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_vertebra.annotation import _atomic
from napari_vertebra.annotation.project import AnnotationProject
from napari_vertebra.annotation.session import AnnotationSession

KEY = "lumbar"


@pytest.fixture
def project_dir(tmp_path, lumbar_annotated):
    """A closed project holding the lumbar MIP with its polygons (3 history steps)."""
    folder = tmp_path / "proj"
    proj = AnnotationProject(folder)
    proj.add_image(KEY, lumbar_annotated.image, scan="lumbar-scan", meta={"layer": "MIP"})
    anns = lumbar_annotated.annotations
    proj.save(KEY, anns, label="labels from 3D")
    proj.save(KEY, anns[1:], label="delete T12")
    proj.close()
    return folder


def _ann_file(folder):
    return folder / "annotations" / f"{KEY}.json"


def _edit_annotations(folder, edit) -> str:
    """Apply ``edit(list of annotation dicts)`` to the annotation file; its new text."""
    path = _ann_file(folder)
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data["annotations"])
    text = json.dumps(data)
    path.write_text(text, encoding="utf-8")
    return text


def _set_vertex(anns, value):
    anns[0]["polygons"][0][1][0] = value


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: _set_vertex(a, math.nan), "annotation 1 (L1): polygon 0 has non-finite"),
        (lambda a: a[0].update(class_id=14.7), "annotation 1: class_id 14.7 is not an integer"),
        (
            lambda a: a[0].update({"class": "T3", "class_id": 14}),
            "annotation 1 (L2): class 'T3' does not match class_id 14 (L2)",
        ),
        (lambda a: a[0].update(class_id=99), "annotation 1: class id 99 is not a vertebra level"),
        (
            lambda a: a[0]["polygons"][0].__setitem__(2, [4.0]),
            "annotation 1 (L1): polygon 0 is not a list of [row, col] number pairs",
        ),
        (lambda a: a[1].update(score=7.5), "annotation 2 (L2): score 7.5 is not a number in 0..1"),
    ],
)
def test_invalid_annotation_files_are_refused_naming_file_and_polygon(
    project_dir, tmp_path, files_in, edit, message
):
    text = _edit_annotations(project_dir, edit)
    proj = AnnotationProject(project_dir)
    with pytest.raises(ValueError) as err:
        proj.load(KEY)
    msg = str(err.value)
    assert msg.startswith(str(_ann_file(project_dir))) and message in msg
    assert "delete it to restore the last state of the undo history" in msg
    assert _ann_file(project_dir).read_text(encoding="utf-8") == text  # left as it was
    session = AnnotationSession()  # Export refuses it too, writing nothing
    session.open(project_dir)
    with pytest.raises(ValueError, match="invalid annotation file"):
        session.export_coco(tmp_path / "out")
    session.close()
    assert files_in(tmp_path / "out") == set()


def test_a_deleted_annotation_file_is_restored_from_the_history(project_dir):
    _ann_file(project_dir).unlink()
    proj = AnnotationProject(project_dir)
    assert [a.name for a in proj.load(KEY)][:2] == ["L1", "L2"]  # the last step
    assert any("was missing: restored from the undo history" in w for w in proj.warnings)


def test_a_two_point_polygon_is_kept_with_a_warning(project_dir, tmp_path):
    _edit_annotations(project_dir, lambda a: a[0]["polygons"].append([[1.0, 1.0], [5.0, 5.0]]))
    session = AnnotationSession()
    session.open(project_dir)
    assert len(session.load(KEY)[0].polygons) == 2
    (note,) = session.take_warnings()
    assert str(_ann_file(project_dir)) in note and "annotation 1 (L1): polygon 1 has 2" in note
    _, skipped = session.export_coco(tmp_path / "out")
    assert skipped == 1  # Export leaves it out and says so


def test_saving_non_finite_polygons_is_refused(project_dir):
    from napari_vertebra.annotation.types import VertebraAnnotation

    proj = AnnotationProject(project_dir)
    before = _ann_file(project_dir).read_bytes()
    bad = VertebraAnnotation(13, [np.array([[0, 0], [0, 5], [np.nan, 5]])])
    with pytest.raises(ValueError, match=r"polygon 0 has non-finite.*nothing was saved"):
        proj.save(KEY, [bad])
    assert _ann_file(project_dir).read_bytes() == before
    assert proj.history(KEY).labels() == ["start", "labels from 3D", "delete T12"]


def test_index_without_hu_scale_names_the_file_and_assumes_the_project_scale(project_dir):
    index = project_dir / "project.json"
    data = json.loads(index.read_text(encoding="utf-8"))
    expected = AnnotationProject(project_dir).image(KEY).image
    del data["images"][KEY]["hu_scale"]
    index.write_text(json.dumps(data), encoding="utf-8")
    proj = AnnotationProject(project_dir)
    (note,) = proj.warnings
    assert str(index) in note and f"image {KEY!r}: has no hu_scale" in note
    np.testing.assert_array_equal(proj.image(KEY).image, expected)
    assert AnnotationProject(project_dir).warnings == []  # repaired on disk, said once


@pytest.mark.parametrize("damage", ["deleted", "emptied", "garbage"])
def test_a_lost_index_is_rebuilt_from_the_files(project_dir, tmp_path, damage):
    index = project_dir / "project.json"
    if damage == "deleted":
        index.unlink()
    elif damage == "emptied":
        index.write_text(json.dumps({"version": 1, "images": {}}), encoding="utf-8")
    else:
        index.write_text("{not json", encoding="utf-8")
    session = AnnotationSession()
    session.open(project_dir)
    assert session.list_images() == [KEY]
    notes = session.take_warnings()
    assert any(str(index) in n and "rebuilt from the image files (1 added" in n for n in notes)
    path, _ = session.export_coco(tmp_path / "out")
    coco = json.loads(path.read_text(encoding="utf-8"))
    assert len(coco["images"]) == 1 and len(coco["annotations"]) >= 5  # not empty
    if damage == "garbage":
        assert (project_dir / "project.json.unreadable").read_text() == "{not json"


def test_a_history_cursor_out_of_range_keeps_every_snapshot(project_dir, lumbar_annotated):
    proj = AnnotationProject(project_dir)
    proj.undo(KEY)  # the file holds "labels from 3D" (T12 back), "delete T12" is redo
    proj.close()
    hist_dir = project_dir / "history" / KEY
    index = hist_dir / "index.json"
    data = json.loads(index.read_text(encoding="utf-8"))
    data["cursor"] = 57
    index.write_text(json.dumps(data), encoding="utf-8")
    snapshots = {p.name: p.read_bytes() for p in hist_dir.glob("[0-9]*.json")}
    proj = AnnotationProject(project_dir)
    assert proj.load(KEY)[0].name == "T12"  # what the file holds
    hist = proj.history(KEY)
    assert any("cursor 57 is outside the 3 steps" in w for w in proj.warnings)
    assert hist.labels() == ["start", "labels from 3D", "delete T12"]
    assert hist.undo_label == "labels from 3D" and hist.redo_label == "delete T12"
    proj.save(KEY, lumbar_annotated.annotations[2:], label="delete L1")  # drops the redo
    new_id = hist.current_id
    proj.close()
    assert f"{new_id}.json" not in snapshots  # a new id: no snapshot is overwritten
    for st in hist.steps[:-1]:
        name = f"{st['id']}.json"
        assert (hist_dir / name).read_bytes() == snapshots[name]
    again = AnnotationProject(project_dir)
    assert again.history(KEY).labels() == ["start", "labels from 3D", "delete L1"]
    assert again.undo(KEY)[0].name == "T12"


def test_an_unreadable_history_index_keeps_its_snapshots(project_dir, lumbar_annotated):
    hist_dir = project_dir / "history" / KEY
    snapshots = {p.name: p.read_bytes() for p in hist_dir.glob("[0-9]*.json")}
    (hist_dir / "index.json").write_text("[1, 2", encoding="utf-8")
    proj = AnnotationProject(project_dir)
    proj.save(KEY, lumbar_annotated.annotations[3:], label="delete more")
    assert any("could not be read" in w for w in proj.warnings)
    proj.close()
    for name, content in snapshots.items():
        assert (hist_dir / name).read_bytes() == content
    assert (hist_dir / "index.json.unreadable").read_text() == "[1, 2"


@pytest.mark.parametrize("failing_write", [0, 1, 2])
def test_a_save_stopped_between_its_files_reopens_consistent(
    project_dir, lumbar_annotated, monkeypatch, failing_write
):
    """A save writes the snapshot, the history index, then the annotation file: stopped
    before any of them, the project reopens with polygons and undo history agreeing."""
    proj = AnnotationProject(project_dir)
    proj.load(KEY)
    calls = []
    real_replace = _atomic.os.replace

    def stop(src, dst):
        calls.append(dst)
        if len(calls) == failing_write + 1:
            raise KeyboardInterrupt  # the process stops here
        real_replace(src, dst)

    monkeypatch.setattr(_atomic.os, "replace", stop)
    with pytest.raises(KeyboardInterrupt):
        proj.save(KEY, lumbar_annotated.annotations[2:], label="delete L1")
    monkeypatch.undo()
    proj.close()
    again = AnnotationProject(project_dir)
    names = [a.name for a in again.load(KEY)]
    hist = again.history(KEY)
    expected = ["L2"] if hist.labels()[-1] == "delete L1" else ["L1"]
    assert names[:1] == expected
    assert hist.labels()[-1] == ("delete L1" if failing_write == 2 else "delete T12")
    stored = json.loads(_ann_file(project_dir).read_text(encoding="utf-8"))
    assert stored["step"] == hist.current_id and stored["annotations"] == hist.payload()
    assert sorted(p.name for p in (project_dir / "history" / KEY).glob("*.json")) == sorted(
        [*(f"{s['id']}.json" for s in hist.steps), "index.json"]
    )  # no snapshot that the history does not name


def test_stale_temporary_files_are_removed_on_open(project_dir):
    stale = [
        project_dir / "annotations" / f".{KEY}.json.abc123.tmp",
        project_dir / "history" / KEY / ".index.json.x1.tmp",
        project_dir / ".project.json.zz.tmp",
    ]
    for p in stale:
        p.write_text("half", encoding="utf-8")
    AnnotationProject(project_dir)
    assert not any(p.exists() for p in stale)
