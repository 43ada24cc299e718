"""napari sample data: the bundled lumbar CT with its vertebra labels (T11..L5)."""

from __future__ import annotations

from pathlib import Path

from napari_vertebra.core.io import read_ct, read_labels
from napari_vertebra.core.labels import to_class_map

from ._layers import BONE_CONTRAST, class_label_colormap, class_label_features, layer_kwargs
from ._reader import prefer_this_reader

__all__ = ["SAMPLE_CT", "SAMPLE_LABELS", "lumbar_ct"]

_DIR = Path(__file__).resolve().parents[1] / "_sample_data"
#: The bundled TotalSegmentator example CT (3 mm) and its v2 label map.
SAMPLE_CT = _DIR / "example_ct.nii.gz"
SAMPLE_LABELS = _DIR / "example_seg_fast_force_split.nii.gz"

#: Layer names of the sample.
CT_NAME = "lumbar CT"
LABELS_NAME = "vertebra labels (3D)"


def lumbar_ct() -> list[tuple]:
    """Layer data: "lumbar CT" (Image, HU) and "vertebra labels (3D)" (class ids 1..17)."""
    prefer_this_reader()
    ct = read_ct(SAMPLE_CT)
    labels = read_labels(SAMPLE_LABELS, like=ct)
    classes = to_class_map(labels.array, "totalsegmentator")
    meta = {"source_path": str(SAMPLE_CT)}
    ct_kwargs = layer_kwargs(
        ct, name=CT_NAME, colormap="gray", contrast_limits=BONE_CONTRAST, metadata=meta
    )
    lab_kwargs = layer_kwargs(
        labels.with_array(classes),
        name=LABELS_NAME,
        colormap=class_label_colormap(),
        features=class_label_features(),
        opacity=0.5,
        metadata={"source_path": str(SAMPLE_LABELS), "convention": "class_ids"},
    )
    return [(ct.array, ct_kwargs, "image"), (classes, lab_kwargs, "labels")]
