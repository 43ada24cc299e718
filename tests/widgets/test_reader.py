"""The napari reader, writer and sample data of napari-vertebra."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vertebra.core.dicom import list_dicom_series
from napari_vertebra.core.io import read_ct
from napari_vertebra.widgets._layers import GEOMETRY_KEY, volume_from_layer
from napari_vertebra.widgets._reader import get_reader, is_label_volume
from napari_vertebra.widgets._sample import CT_NAME, LABELS_NAME, lumbar_ct
from napari_vertebra.widgets._writer import write_volume_layer

pytestmark = pytest.mark.gui


def _read(path):
    reader = get_reader(str(path))
    assert reader is not None, f"no reader for {path}"
    return reader(str(path))


def test_reader_nifti_ct_and_labels(lumbar_ct_path, lumbar_labels_path):
    ((data, kw, kind),) = _read(lumbar_ct_path)
    ct = read_ct(lumbar_ct_path)
    assert kind == "image"
    assert data.shape == ct.shape
    np.testing.assert_allclose(kw["scale"], ct.spacing)
    np.testing.assert_allclose(kw["translate"], ct.origin[::-1])
    geo = kw["metadata"][GEOMETRY_KEY]
    np.testing.assert_allclose(geo["origin"], ct.origin)
    lo, hi = kw["contrast_limits"]
    assert lo < 200 < 1000 < hi  # a bone window

    ((ldata, lkw, lkind),) = _read(lumbar_labels_path)
    assert lkind == "labels"
    assert np.issubdtype(ldata.dtype, np.integer)
    assert ldata.shape == data.shape
    np.testing.assert_allclose(lkw["translate"], kw["translate"])


def test_reader_tptbox_names_do_not_fool_it(tptbox_ct_path, tptbox_labels_path):
    # the CT's file name contains "label" (BIDS entity); its content says CT
    assert _read(tptbox_ct_path)[0][2] == "image"
    ((data, _, kind),) = _read(tptbox_labels_path)
    assert kind == "labels"
    assert set(np.unique(data)) == {0, 21, 22, 23}


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_reader_other_formats(tmp_path, tptbox_ct_path, suffix):
    img = sitk.ReadImage(str(tptbox_ct_path))
    out = tmp_path / f"volume{suffix}"
    sitk.WriteImage(img, str(out))
    ((data, kw, kind),) = _read(out)
    ref = read_ct(tptbox_ct_path)
    assert kind == "image"
    np.testing.assert_array_equal(data, ref.array)
    np.testing.assert_allclose(kw["translate"], ref.origin[::-1], atol=1e-3)


def test_reader_dicom_folder(dicom_dir):
    ((data, kw, kind),) = _read(dicom_dir)
    assert kind == "image"
    assert data.shape[0] == 20
    np.testing.assert_allclose(kw["scale"][1:], [0.9765625, 0.9765625], rtol=1e-4)


def _write_series(folder, volume: sitk.Image, uid: str, description: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        sl = volume[:, :, k]
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0008|103e": description,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, k)))),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0008|0018": f"{uid}.{k + 1}",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{description}_{k:03d}.dcm"))
        writer.Execute(sl)


def test_reader_dicom_folder_with_two_series_loads_the_largest(tmp_path, make_napari_viewer):
    rng = np.random.default_rng(1)
    big = sitk.GetImageFromArray(rng.integers(-1000, 2000, (6, 16, 16)).astype(np.int16))
    small = sitk.GetImageFromArray(rng.integers(-1000, 2000, (3, 16, 16)).astype(np.int16))
    _write_series(tmp_path / "dcm", big, "1.2.826.0.1.3680043.2.1125.10", "big")
    _write_series(tmp_path / "dcm", small, "1.2.826.0.1.3680043.2.1125.20", "small")
    assert len(list_dicom_series(tmp_path / "dcm")) == 2
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    try:
        ((data, _, kind),) = _read(tmp_path / "dcm")
    finally:
        notification_manager.notification_ready.disconnect()
    assert kind == "image"
    assert data.shape[0] == 6
    assert any("2 DICOM series" in m and "largest" in m for m in seen), seen


def test_reader_bad_file_is_a_notification_not_a_traceback(tmp_path, make_napari_viewer):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a volume")
    viewer = make_napari_viewer()
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    try:
        layers = viewer.open(str(bad), plugin="napari-vertebra")
    finally:
        notification_manager.notification_ready.disconnect()
    assert layers == []
    assert any("broken.nii.gz" in m for m in seen), seen


def test_reader_refuses_what_it_cannot_read(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    # a folder without DICOM files: the plugin's reader takes it and says so, no layer
    # (issue 19: napari's own reader gave a raw SimpleITK error there)
    from napari_vertebra.widgets import _reader

    said = []
    monkeypatch.setattr(_reader, "notify", lambda msg, level="info": said.append((level, msg)))
    assert get_reader(str(tmp_path))(str(tmp_path)) == [(None,)]
    assert [level for level, _ in said] == ["error"]
    assert "no DICOM file" in said[0][1] and "notes.txt" in said[0][1]


def test_is_label_volume_rules():
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 2000, size=(8, 8, 8)).astype(np.int16)
    assert not is_label_volume(ct)
    assert is_label_volume(rng.integers(0, 5, size=(8, 8, 8)).astype(np.uint8))
    assert not is_label_volume(rng.random((8, 8, 8)).astype(np.float32), "seg.nii.gz")
    many = rng.integers(0, 3000, size=(16, 16, 16)).astype(np.int32)
    assert not is_label_volume(many, "scan.nii.gz")
    assert is_label_volume(many, "scan_seg.nii.gz")


def test_viewer_opens_ct_and_writer_round_trip(tmp_path, make_napari_viewer, tptbox_ct_path):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tptbox_ct_path), plugin="napari-vertebra")
    vol = volume_from_layer(layer)
    ref = read_ct(tptbox_ct_path)
    assert vol.same_grid(ref)
    out = tmp_path / "saved.nii.gz"
    written = write_volume_layer(str(out), layer.data, {"metadata": layer.metadata})
    assert written == [str(out)]
    back = read_ct(out)
    assert back.same_grid(ref)
    np.testing.assert_array_equal(back.array, ref.array)
    # a 2D layer (e.g. a MIP) is written as a 2D image with its pixel spacing
    mip = tmp_path / "mip.nii.gz"
    assert write_volume_layer(str(mip), np.ones((5, 7), np.float32), {"scale": (1.0, 2.0)})
    img = sitk.ReadImage(str(mip))
    assert img.GetSize() == (7, 5) and img.GetSpacing() == (2.0, 1.0)


def test_sample_data(make_napari_viewer):
    (ct, ct_kw, ct_kind), (lab, lab_kw, lab_kind) = lumbar_ct()
    assert (ct_kind, lab_kind) == ("image", "labels")
    assert ct_kw["name"] == CT_NAME and lab_kw["name"] == LABELS_NAME
    assert ct.shape == lab.shape
    ids = set(np.unique(lab).tolist())
    assert ids <= set(range(18)) and {13, 17} <= ids  # L1 and L5 present, class ids only
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-vertebra", "lumbar_ct")
    assert [la.name for la in layers] == [CT_NAME, LABELS_NAME]
    colour = layers[1].colormap.map(np.array([17]))[0]
    from napari_vertebra.core.labels import class_colours_rgba

    np.testing.assert_allclose(colour, class_colours_rgba()[17], atol=1e-3)


def test_dicom_reader_folder_copy_is_independent(tmp_path, dicom_dir):
    # the reader reads any folder holding DICOM files (no .dcm suffix needed)
    dst = tmp_path / "series"
    shutil.copytree(dicom_dir, dst)
    assert get_reader(str(dst)) is not None


def test_file_open_picks_this_plugin_without_asking(
    make_napari_viewer, lumbar_ct_path, tptbox_labels_path
):
    """File > Open and drag and drop (napari's ``plugin=None`` path): napari's built-in
    reader also claims ``*.nii.gz``, so without a preference napari asks which reader to
    use, and the built-in one fails. Using any of the plugin's widgets makes it the
    preferred reader for its patterns, leaving a pattern the user chose alone."""
    from napari.errors import MultipleReaderError
    from napari.settings import get_settings

    from napari_vertebra.widgets.preprocess import PreprocessWidget

    viewer = make_napari_viewer()
    prefs = get_settings().plugins
    prefs.extension2reader = {"*.nrrd": "napari"}  # the user's own choice
    with pytest.raises(MultipleReaderError):
        viewer.open(str(lumbar_ct_path), plugin=None)
    PreprocessWidget(viewer)
    assert prefs.extension2reader["*.nii.gz"] == "napari-vertebra"
    assert prefs.extension2reader["*.nrrd"] == "napari"  # kept
    (ct,) = viewer.open(str(lumbar_ct_path), plugin=None)
    assert ct.name == "example_ct" and ct.data.ndim == 3
    # the Qt path of File > Open and drag and drop: no dialog, the labels open as Labels
    viewer.window._qt_viewer._qt_open([str(tptbox_labels_path)], stack=False)
    assert type(viewer.layers[-1]).__name__ == "Labels"
