"""Make docs/images/mip_before_crop.png and mip_after_crop.png from the bundled sample.

    .venv/bin/python benchmarks/make_docs_images.py

Both are sagittal MIPs (max over left-right) of the windowed 1 mm volume, head up,
anterior left: before = the whole volume, after = the spine crop. Vertebra outlines (from
the sample's TotalSegmentator labels, brightest voxel of each ray) are drawn in their
class colours; the canal track is drawn as dots (white: found, grey: carried across).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from napari_vertebra.core import read_ct, read_labels, run_pipeline
from napari_vertebra.core.labels import class_colour, to_class_map

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "napari_vertebra" / "_sample_data"


def _render(mip: np.ndarray, labels: np.ndarray, hu_max: float) -> np.ndarray:
    grey = np.clip(mip / hu_max * 255 * 1.6, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for cid in np.unique(labels):
        if cid == 0:
            continue
        m = labels == cid
        edge = m & ~ndi.binary_erosion(m)
        c = class_colour(int(cid)).lstrip("#")
        rgb[edge] = [int(c[i : i + 2], 16) for i in (0, 2, 4)]
    return rgb


def main() -> int:
    """Write the two images; print their sizes."""
    ct = read_ct(SAMPLE / "example_ct.nii.gz")
    seg = read_labels(SAMPLE / "example_seg_fast_force_split.nii.gz", like=ct)
    res = run_pipeline(ct, labels=seg)
    hu_max = res.params.hu_max
    cls = to_class_map(res.labels_resampled.array, "totalsegmentator")

    full = res.windowed.array
    am = full.argmax(axis=2)
    mip_full = np.take_along_axis(full, am[..., None], axis=2)[..., 0][::-1]
    lab_full = np.take_along_axis(cls, am[..., None], axis=2)[..., 0][::-1]

    rows, cols = np.nonzero(np.ones_like(res.mip, bool))
    idx = res.mip_to_volume_index(rows, cols)
    lab_crop = cls[idx[:, 0], idx[:, 1], idx[:, 2]].reshape(res.mip.shape)
    lab_crop[res.mip == 0] = 0

    before = _render(mip_full, lab_full, hu_max)
    after = _render(res.mip, lab_crop, hu_max)
    # canal track on both (row = nz - 1 - z, col = y - y0)
    nz = full.shape[0]
    y0 = res.crop_box[1][0]
    for z, y, _ in res.canal_centres[::3]:
        colour = [255, 255, 255] if res.canal_found[int(z)] else [140, 140, 140]
        r = int(nz - 1 - z)
        before[r, int(np.rint(y))] = colour
        c = int(np.rint(y - y0))
        if 0 <= c < after.shape[1]:
            after[r, c] = colour
    # the crop's y range as two vertical lines on the uncropped image
    for c in (y0, res.crop_box[1][1] - 1):
        before[::4, c] = [255, 200, 0]
    out = ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    for name, img in (("mip_before_crop.png", before), ("mip_after_crop.png", after)):
        path = out / name
        Image.fromarray(img).save(path, optimize=True)
        print(f"{path.relative_to(ROOT)}: {img.shape[1]} x {img.shape[0]} px, "
              f"{path.stat().st_size // 1024} KB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
