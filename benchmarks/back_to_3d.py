"""How well do vertebrae on the sagittal MIP map back into the CT? Dice per vertebra.

    .venv/bin/python benchmarks/back_to_3d.py [--ct CT --labels LABELS --convention NAME]

Default: the bundled lumbar CT (TotalSegmentator example, 3 mm) and its vertebra labels.
The 3D labels go through the preprocessing pipeline with the CT and are projected onto
the MIP in two ways, as perfect MIP "predictions":

* ``ray``: the class of the brightest voxel of each ray (what "MIP labels" shows);
* ``polygons``: the project's polygons from the 3D labels
  (:func:`napari_vertebra.annotation.from3d.labels_to_annotations`, rasterised).

Each is carried back to 3D with :func:`napari_vertebra.core.mip_labels_to_volume` (the
"Show in 3D" of the Predict widget) and compared with the resampled 3D labels: Dice per
vertebra over the whole resampled volume. This is the ceiling of the MIP-to-3D estimate
(a perfect 2D prediction); it is a first estimate, not a 3D segmentation.

:func:`measure` is also used by tests/widgets/test_predict_back_to_3d.py.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CT = ROOT / "napari_vertebra" / "_sample_data" / "example_ct.nii.gz"
SAMPLE_LABELS = ROOT / "napari_vertebra" / "_sample_data" / "example_seg_fast_force_split.nii.gz"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def measure(
    ct_path: str | Path = SAMPLE_CT,
    labels_path: str | Path = SAMPLE_LABELS,
    convention: str = "totalsegmentator",
) -> dict:
    """{"ray": {name: Dice}, "polygons": {name: Dice}, "voxels": {name: n}, "seconds": s}.

    A vertebra without a label on the MIP (e.g. no polygon: cut by the scan edge) is
    left out of that kind's table.
    """
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.annotation.polygons import annotations_to_label_image
    from napari_vertebra.core import mip_labels_to_volume, read_ct, read_labels, run_pipeline
    from napari_vertebra.core.labels import class_name, to_class_map

    t0 = time.perf_counter()
    ct = read_ct(ct_path)
    labels = read_labels(labels_path, like=ct)
    result = run_pipeline(ct, labels=labels)
    truth = to_class_map(result.labels_resampled.array, convention)
    crop = to_class_map(result.labels_cropped.array, convention)[::-1]  # rows: superior first
    ray = np.take_along_axis(crop, result.mip_argmax_x[..., None].astype(np.intp), axis=2)[..., 0]
    ray = np.where(result.mip > 0, ray, 0)
    image = labels_to_annotations(ct, labels, convention, result=result)
    polygons = annotations_to_label_image(image.annotations, result.mip.shape)
    out: dict = {"ray": {}, "polygons": {}, "voxels": {}}
    t_back = time.perf_counter()
    for kind, mip_labels in (("ray", ray), ("polygons", polygons)):
        back = mip_labels_to_volume(mip_labels, result)
        for c in np.unique(truth):
            if c == 0 or not (mip_labels == c).any():
                continue  # e.g. a vertebra cut by the scan edge has no polygon
            name = class_name(int(c))
            out[kind][name] = _dice(back == c, truth == c)
            out["voxels"][name] = int((truth == c).sum())
    out["back_seconds"] = (time.perf_counter() - t_back) / 2
    out["seconds"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ct", default=str(SAMPLE_CT), help="CT file (default: the lumbar sample)")
    p.add_argument("--labels", default=str(SAMPLE_LABELS), help="its vertebra label map")
    p.add_argument("--convention", default="totalsegmentator", help="label ids (verse, ...)")
    args = p.parse_args(argv)
    r = measure(args.ct, args.labels, args.convention)
    print(f"MIP -> 3D (mip_labels_to_volume) on {Path(args.ct).name}: Dice per vertebra")
    print(f"{'vertebra':>8} {'ray GT':>8} {'polygon GT':>11} {'voxels':>8}")
    for name in r["ray"]:
        poly = r["polygons"].get(name)
        poly_text = "-" if poly is None else f"{poly:.3f}"
        print(f"{name:>8} {r['ray'][name]:8.3f} {poly_text:>11} {r['voxels'][name]:8d}")
    print(
        f"{'mean':>8} {np.mean(list(r['ray'].values())):8.3f} "
        f"{np.mean(list(r['polygons'].values())):11.3f}"
    )
    print("(polygon GT: vertebrae cut by the scan edge get no polygon: '-')")
    print(f"back-projection {r['back_seconds']:.2f} s per call; total {r['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
