"""Undo / redo of a MIP's annotations on disk, and the level tools (no Qt)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_vertebra.annotation import _atomic
from napari_vertebra.annotation.history import History, Writer
from napari_vertebra.annotation.level_tools import next_missing, shift_levels
from napari_vertebra.annotation.project import AnnotationProject
from napari_vertebra.annotation.types import VertebraAnnotation
from napari_vertebra.core.labels import class_id

SQ = np.array([[2, 2], [2, 20], [15, 20], [15, 2]], float)


def _ann(name: str, dy: float = 0.0, score=None) -> VertebraAnnotation:
    return VertebraAnnotation(class_id(name), [SQ + np.array([dy, 0])], score)


def _names(anns) -> list[str]:
    return [a.name for a in anns]


def test_history_undo_redo_and_a_new_branch(tmp_path):
    h = History(tmp_path / "h")
    assert not h.can_undo and not h.can_redo and h.undo() is None
    assert h.record([1], "one")
    assert h.record([1, 2], "two")
    assert not h.record([1, 2], "same again")  # nothing changed: no step
    assert h.labels() == ["start", "one", "two"]
    assert h.undo_label == "two"
    assert h.undo() == [1] and h.undo() == [] and h.undo() is None
    assert h.redo() == [1] and h.redo_label == "two"
    assert h.record([9], "other")  # a new change drops the redo branch
    assert not h.can_redo and h.labels() == ["start", "one", "other"]
    assert h.undo() == [1]


def test_history_survives_a_restart(tmp_path):
    h = History(tmp_path / "h")
    for i in range(4):
        h.record(list(range(i + 1)), f"step {i}")
    h.undo()
    again = History(tmp_path / "h")  # a new process reading the same folder
    assert again.labels() == h.labels() and again.cursor == h.cursor
    assert again.payload() == [0, 1, 2]
    assert again.redo() == [0, 1, 2, 3]
    assert again.undo() == [0, 1, 2] and again.undo() == [0, 1]


def test_history_is_bounded_on_disk(tmp_path):
    h = History(tmp_path / "h", max_steps=5)
    for i in range(12):
        h.record([i], f"step {i}")
    assert len(h) == 6  # 5 undo steps + the state they lead back to
    n_undo = 0
    while h.undo() is not None:
        n_undo += 1
    assert n_undo == 5 and h.payload() == [6]
    snapshots = [p for p in (tmp_path / "h").iterdir() if p.name != "index.json"]
    assert len(snapshots) == 6  # dropped steps' files are deleted
    assert History(tmp_path / "h").payload() == [6]


def test_unreadable_history_starts_a_new_one(tmp_path):
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "index.json").write_text("{not json", encoding="utf-8")
    h = History(tmp_path / "h")
    assert h.warning and "index.json" in h.warning
    assert len(h) == 0 and h.record([1], "one")


def test_project_save_is_an_undoable_step_across_a_restart(tmp_path):
    proj = AnnotationProject(tmp_path / "p")
    proj.add_image("img", np.zeros((40, 30), np.float32))
    proj.save("img", [_ann("L1")], label="draw L1")
    proj.save("img", [_ann("L1"), _ann("L2", 20, score=0.8)], label="review accept L2")
    assert proj.can_undo("img") and not proj.can_redo("img")
    proj.close()

    again = AnnotationProject(tmp_path / "p")  # a restart
    assert _names(again.load("img")) == ["L1", "L2"]
    assert again.history("img").undo_label == "review accept L2"
    assert _names(again.undo("img")) == ["L1"]
    assert _names(AnnotationProject(tmp_path / "p").load("img")) == ["L1"]  # on disk
    assert again.undo("img") == [] and again.undo("img") is None
    back = again.redo("img") and again.redo("img")
    assert _names(back) == ["L1", "L2"] and back[1].score == pytest.approx(0.8)
    np.testing.assert_allclose(back[1].polygons[0], SQ + np.array([20, 0]))


def test_first_save_keeps_the_annotations_saved_before_histories(tmp_path):
    proj = AnnotationProject(tmp_path / "p")
    proj.add_image("img", np.zeros((40, 30), np.float32))
    proj.save("img", [_ann("T12")], record=False)  # as an older version left it
    proj.close()
    proj = AnnotationProject(tmp_path / "p")
    proj.save("img", [_ann("L1")])
    assert _names(proj.undo("img")) == ["T12"]


def test_project_objects_on_one_folder_share_the_history(tmp_path):
    a = AnnotationProject(tmp_path / "p")
    b = AnnotationProject(tmp_path / "p")  # e.g. the Review widget's own
    a.save("img", [_ann("L1")])
    b.save("img", [_ann("L1"), _ann("L2", 20)], label="review")
    assert a.history("img").undo_label == "review"
    assert _names(a.undo("img")) == ["L1"]


def test_background_writes_reach_the_disk_in_order(tmp_path):
    proj = AnnotationProject(tmp_path / "p", background=True)
    for i in range(1, 6):
        proj.save("img", [_ann(f"L{i}")], label=f"L{i}")
    proj.flush()
    data = json.loads((tmp_path / "p" / "annotations" / "img.json").read_text("utf-8"))
    assert [a["class"] for a in data["annotations"]] == ["L5"]
    index = json.loads((tmp_path / "p" / "history" / "img" / "index.json").read_text("utf-8"))
    assert [s["label"] for s in index["steps"]] == ["start", "L1", "L2", "L3", "L4", "L5"]


def test_a_failed_background_write_is_reported(tmp_path, monkeypatch):
    proj = AnnotationProject(tmp_path / "p", background=True)
    proj.save("img", [_ann("L1")])
    proj.flush()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(_atomic.os, "fsync", boom)
    proj.save("img", [_ann("L2")])  # queued: the GUI does not wait for it
    with pytest.raises(OSError, match="disk full"):
        proj.flush()
    monkeypatch.undo()
    assert _names(AnnotationProject(tmp_path / "p").load("img")) == ["L1"]  # intact


def test_inline_writer_runs_at_once(tmp_path):
    out = []
    w = Writer()
    w.submit(lambda: out.append(1))
    assert out == [1]
    w.flush()


def test_shift_levels():
    anns = [_ann("L1"), _ann("L2", 20, score=0.5)]
    up = shift_levels(anns, -1)
    assert _names(up) == ["T12", "L1"] and up[1].score == 0.5
    assert _names(anns) == ["L1", "L2"]  # the input is not changed
    np.testing.assert_allclose(up[0].polygons[0], SQ)
    assert _names(shift_levels(anns, 1)) == ["L2", "L3"]
    with pytest.raises(ValueError, match="past L5"):
        shift_levels([_ann("L5")], 1)
    with pytest.raises(ValueError, match="past T1"):
        shift_levels([_ann("T1"), _ann("T2")], -1)
    with pytest.raises(ValueError, match=r"T1\.\.L5"):
        shift_levels([VertebraAnnotation(21, [SQ])], 1)


def test_next_missing():
    lumbar = [class_id(n) for n in ("T12", "L1", "L2", "L3", "L4", "L5")]
    assert next_missing(lumbar, class_id("L1"), 1) == class_id("T11")
    assert next_missing(lumbar, class_id("L1"), -1) == class_id("T11")
    assert next_missing([class_id("L3")], class_id("L3"), 1) == class_id("L4")
    assert next_missing([class_id("L3")], class_id("L2"), 1) == class_id("L2")
    assert next_missing([class_id("L5")], class_id("L5"), 1) == class_id("L4")
    assert next_missing(range(1, 18), 5, 1) is None


def test_history_module_imports_no_qt_napari_or_torch():
    code = (
        "import sys, napari_vertebra.annotation.history, napari_vertebra.annotation.project;"
        "bad = [m for m in ('qtpy', 'PyQt5', 'PyQt6', 'napari', 'torch') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_step_whose_snapshot_is_gone_is_an_error_not_nothing_to_undo(tmp_path):
    h = History(tmp_path / "h")
    h.record([1], "one")
    h.record([1, 2], "two")
    h.writer.wait()
    again = History(tmp_path / "h")  # a restart: the snapshots are read from disk
    sid = int(again.steps[again.cursor - 1]["id"])
    again._snapshot_path(sid).unlink()
    with pytest.raises(ValueError, match=r"'one' could not be read .*annotations are unchanged"):
        again.undo()
    assert again.cursor == 2 and again.payload() == [1, 2]  # nothing moved
