"""File > Open, Open Folder and ``viewer.open`` of what the plugin cannot read (issue 19).

The File menu is driven as a user drives it: the menu action is triggered, the file
dialog answers with the chosen path (QFileDialog patched), and napari's "Choose reader"
dialog, should it come up, is recorded and cancelled.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from widget_helpers import ROOT

from napari_vertebra.widgets._reader import get_reader
from napari_vertebra.widgets.preprocess import PreprocessWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def menu_viewer(make_napari_viewer, monkeypatch):
    """A viewer with a plugin widget docked (napari-vertebra is the preferred reader),
    the reader dialogs it shows (``viewer.asked``) and its notifications (``viewer.seen``)."""
    from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    viewer.window.add_dock_widget(PreprocessWidget(viewer), name="Preprocess CT")
    asked: list[str] = []
    monkeypatch.setattr(QtReaderDialog, "exec_", lambda self: asked.append(self._current_file))
    seen: list[tuple[str, str]] = []

    def record(n):
        seen.append((str(n.severity), str(n.message)))

    notification_manager.notification_ready.connect(record)
    yield viewer, asked, seen
    notification_manager.notification_ready.disconnect(record)


def _trigger(viewer, title: str) -> None:
    """Click ``title`` in the File menu (its own entries, not "Open with Plugin")."""
    menu = viewer.window.file_menu
    menu.aboutToShow.emit()
    (action,) = [a for a in menu.actions() if a.text() == title]
    action.trigger()


def _choose_files(monkeypatch, paths) -> None:
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getOpenFileNames", lambda *a, **k: ([*map(str, paths)], ""))


def _choose_folder(monkeypatch, folder) -> None:
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))


def _eight_bit_ct(src, out):
    """The CT ``src`` stored as 8 bits (HU / 8 + 128, clipped), geometry kept."""
    img = sitk.ReadImage(str(src))
    arr = sitk.GetArrayFromImage(img).astype(float)
    small = sitk.GetImageFromArray(np.clip(arr / 8 + 128, 0, 255).astype(np.uint8))
    small.CopyInformation(img)
    sitk.WriteImage(small, str(out))
    return out


def test_file_open_of_an_8bit_ct_is_refused_and_an_8bit_label_map_opens(
    menu_viewer, monkeypatch, tmp_path, tptbox_ct_path, tptbox_labels_path
):
    viewer, asked, seen = menu_viewer
    ct8 = _eight_bit_ct(tptbox_ct_path, tmp_path / "scan_8bit.nii.gz")
    _choose_files(monkeypatch, [ct8])
    _trigger(viewer, "Open File(s)...")
    assert asked == []  # no "Choose reader"
    assert len(viewer.layers) == 0  # not opened as a Labels layer (nor as anything)
    errors = [m for level, m in seen if level == "error"]
    assert any("scan_8bit.nii.gz" in m and "uint8" in m and "original CT" in m for m in errors)
    # a uint8 label map still opens as labels
    _choose_files(monkeypatch, [tptbox_labels_path])
    _trigger(viewer, "Open File(s)...")
    assert [type(la).__name__ for la in viewer.layers] == ["Labels"]
    assert set(np.unique(viewer.layers[0].data)) == {0, 21, 22, 23}


def test_open_folder_without_dicom_gives_the_plugins_message(
    menu_viewer, monkeypatch, tmp_path, dicom_dir
):
    viewer, asked, seen = menu_viewer
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a scan", encoding="utf-8")
    (folder / "slice.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    _choose_folder(monkeypatch, folder)
    _trigger(viewer, "Open Folder...")
    assert asked == []  # no "Choose reader" with napari's builtins preselected
    assert len(viewer.layers) == 0
    msgs = [m for _, m in seen]
    assert any("pictures" in m and "no DICOM file" in m and "notes.txt" in m for m in msgs)
    assert any("Open with Plugin" in m for m in msgs)
    assert not any("ImageIO" in m or "Traceback" in m for m in msgs), msgs
    # a DICOM folder opens at once, every time (no question)
    series = tmp_path / "series"
    shutil.copytree(dicom_dir, series)
    _choose_folder(monkeypatch, series)
    for _ in range(2):
        _trigger(viewer, "Open Folder...")
    assert asked == []
    assert [la.name for la in viewer.layers] == ["series", "series [1]"]
    assert viewer.layers[0].data.shape[0] == 20


def test_viewer_open_from_the_console_as_the_readme_says(
    make_napari_viewer, tmp_path, lumbar_ct_path, dicom_dir
):
    """napari's ``viewer.open(path)`` uses napari's own reader (it fails on a CT with
    "Could not find a backend"); the README says to name the plugin."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'viewer.open("ct.nii.gz", plugin="napari-vertebra")' in readme
    viewer = make_napari_viewer()  # no widget used: no reader preference either
    (ct,) = viewer.open(str(lumbar_ct_path), plugin="napari-vertebra")
    assert ct.name == "example_ct" and ct.data.ndim == 3
    (series,) = viewer.open(str(dicom_dir), plugin="napari-vertebra")
    assert series.data.shape[0] == 20
    empty = tmp_path / "empty"
    empty.mkdir()
    assert viewer.open(str(empty), plugin="napari-vertebra") == []  # a message, no error


def test_zarr_stores_are_left_to_napari(tmp_path):
    store = tmp_path / "image.zarr"
    store.mkdir()
    (store / ".zgroup").write_text("{}", encoding="utf-8")
    assert get_reader(str(store)) is None
