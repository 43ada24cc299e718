"""Screenshot of Review keeping a hand-drawn polygon: docs/images/review_hand_kept.png.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python \\
        benchmarks/make_review_image.py CHECKPOINT

CHECKPOINT is a trained ``best.pt``. The script opens napari with every widget docked
(as ``make run`` does), loads the lumbar sample, preprocesses it, draws two rough "hand"
polygons (8 vertices each, from the 3D labels' outline of two vertebrae), predicts with
CHECKPOINT and reviews: the predicted vertebra over the first hand polygon is fixed to
its level (the one under its mask in the 3D labels) with "Keep both" (the answer the
dialog would get), and one with no polygon likewise. The image is the whole window with
Review raised, reduced to 256 colours.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _gui import shoot, wait

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images" / "review_hand_kept.png"


def rough_polygon(poly: np.ndarray, n: int = 8) -> np.ndarray:
    """``n`` vertices spread along the convex hull of ``poly`` (by arc length): what a
    quick hand outline of a vertebra looks like."""
    from scipy.spatial import ConvexHull

    pts = np.asarray(poly, float)
    hull = pts[ConvexHull(pts).vertices]
    ring = np.vstack([hull, hull[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ring, axis=0), axis=1))])
    t = np.linspace(0.0, arc[-1], n, endpoint=False)
    return np.column_stack([np.interp(t, arc, ring[:, k]) for k in (0, 1)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help="a trained best.pt")
    p.add_argument("--min-score", type=float, default=0.5, help="Predict's minimum score")
    p.add_argument("-o", "--out", type=Path, default=OUT, help="output PNG")
    args = p.parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"error: {args.checkpoint}: no such checkpoint", file=sys.stderr)
        return 2

    import napari

    from napari_vertebra.annotation.polygons import label_image_to_annotations
    from napari_vertebra.annotation.types import VertebraAnnotation
    from napari_vertebra.core.labels import class_name
    from napari_vertebra.launch import dock_widgets
    from napari_vertebra.widgets._sample import CT_NAME, LABELS_NAME

    viewer = napari.Viewer(title="napari-vertebra")
    viewer.window._qt_window.resize(1500, 950)
    project = Path(tempfile.mkdtemp(prefix="nv-review-")) / "project"
    widgets = dock_widgets(viewer, project=project, checkpoint=args.checkpoint)
    pre, ann = widgets["Preprocess CT"], widgets["Annotate vertebrae"]
    predict, review = widgets["Predict vertebrae"], widgets["Review predictions"]
    viewer.window._qt_window.show()

    viewer.open_sample("napari-vertebra", "lumbar_ct")
    pre.refresh_choices()
    pre.ct_layer.value = viewer.layers[CT_NAME]
    pre.labels_layer.value = viewer.layers[LABELS_NAME]
    pre.run()
    wait(lambda: not pre.runner.busy)
    mip = pre.mip_layer()
    gt = next(la for la in viewer.layers if la.name.startswith("MIP labels"))
    ann.refresh_choices()
    ann.mip_layer.value = mip

    # Predict first, to draw the "hand" polygons on vertebrae the model also finds
    predict.set_checkpoint(str(args.checkpoint))
    predict.set_image_layer(mip)
    predict.min_score.value = args.min_score
    predict.run()
    wait(lambda: not predict.busy, 600)
    pred = predict.prediction
    labels = np.asarray(gt.data)
    truth = {a.class_id: a for a in label_image_to_annotations(labels)}
    # the level under each predicted mask (the checkpoint may name levels wrongly: Fix
    # gives the right one, as a reviewer would)
    under = []
    for m in pred.masks:
        vals = labels[m & (labels > 0)]
        under.append(int(np.bincount(vals).argmax()) if vals.size else 0)
    rows = [i for i, c in enumerate(under) if c in truth]
    if len(rows) < 3:
        print(f"error: the predicted masks cover too few labelled vertebrae: {under}")
        return 1
    kept, free = rows[len(rows) // 2], rows[-1]
    taken = (under[kept], under[free])
    other = min((c for c in truth if c not in taken), key=lambda c: abs(c - under[kept]))
    hands = [
        VertebraAnnotation(c, [rough_polygon(truth[c].polygons[0])], source="hand")
        for c in (under[kept], other)
    ]
    ann.set_annotations(hands)
    review.refresh()

    # Review: the prediction over the hand polygon is fixed to its level with "Keep
    # both" (the answer the dialog gets here), one without a polygon likewise
    review.ask = lambda title, text, choices: print(f"asked: {text}") or "keep"
    for i in (kept, free):
        review.select(i)
        review.fix_class.value = class_name(under[i])
        review.fix(i)
    review.select(kept)
    ann.shapes.selected_data = set()
    ann.shapes.mode = "pan_zoom"
    # zoom on the polygons (world = pixel coordinates times the MIP's scale)
    pts = np.concatenate([p for a in ann.annotations() for p in a.polygons])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    scale = np.asarray(mip.scale[-2:], float)
    viewer.reset_view()
    viewer.scene.camera.center = tuple((lo + hi) / 2 * scale)
    viewer.scene.camera.zoom *= min(2.5, 0.8 * np.asarray(mip.data).shape[0] / (hi - lo)[0])
    gt.visible = False
    predict.labels_layer.visible = False
    predict.boxes_layer.visible = False
    ann.shapes.visible = True
    viewer.layers.selection.active = ann.shapes
    shoot(viewer, args.out, dock="Review predictions")
    print("project polygons:", [(a.name, len(a.polygons[0])) for a in ann.annotations()])
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
