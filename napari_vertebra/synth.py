"""Synthetic sagittal spine MIPs with vertebra outlines (pure numpy).

Each image is a full-column sagittal MIP in the preprocessing convention (row 0 =
superior, col 0 = anterior; values are HU after the 100..1500 HU window, 0 outside):
T1..L5 stacked along a gently curved column (thoracic kyphosis, lumbar lordosis), bodies
as rounded rectangles that grow downward, dark discs between them, posterior elements,
ribs on T1..T12, a sacrum below L5 and noise. The annotations are the vertebral-body
outlines, (row, col) px, classes 1..17. Used for tests, benchmarks and smoke training;
it is not a substitute for real data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_vertebra.annotation.types import AnnotatedImage, VertebraAnnotation
from napari_vertebra.core.labels import VERTEBRAE
from napari_vertebra.core.progress import ProgressCallback, report

__all__ = ["clip_polygon_rows", "fill_polygon", "synth_dataset", "synth_spine", "write_synth"]

_NV = len(VERTEBRAE)


def fill_polygon(poly: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask (shape) of the pixels whose centres lie inside ``poly`` ((N, 2) row, col)."""
    poly = np.asarray(poly, float)
    mask = np.zeros(shape, bool)
    if len(poly) < 3:
        return mask
    r0 = max(int(np.floor(poly[:, 0].min())), 0)
    r1 = min(int(np.ceil(poly[:, 0].max())) + 1, shape[0])
    c0 = max(int(np.floor(poly[:, 1].min())), 0)
    c1 = min(int(np.ceil(poly[:, 1].max())) + 1, shape[1])
    if r0 >= r1 or c0 >= c1:
        return mask
    rr, cc = np.mgrid[r0:r1, c0:c1].astype(float)
    inside = np.zeros(rr.shape, bool)
    y0, x0 = poly[:, 0], poly[:, 1]
    y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
    for a, b, c, d in zip(y0, x0, y1, x1, strict=True):
        if a == c:
            continue
        cross = (a > rr) != (c > rr)
        xint = b + (rr - a) * (d - b) / (c - a)
        inside ^= cross & (cc < xint)
    mask[r0:r1, c0:c1] = inside
    return mask


def clip_polygon_rows(poly: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """Clip a polygon ((N, 2) row, col) to the band r0 <= row <= r1 (Sutherland-Hodgman)."""

    def clip(pts: list, inside, cut) -> list:
        out = []
        for i in range(len(pts)):
            p, q = pts[i - 1], pts[i]
            if inside(q):
                if not inside(p):
                    out.append(cut(p, q))
                out.append(q)
            elif inside(p):
                out.append(cut(p, q))
        return out

    def cut_at(r):
        def f(p, q):
            t = (r - p[0]) / (q[0] - p[0])
            return (r, p[1] + t * (q[1] - p[1]))

        return f

    pts = [tuple(p) for p in np.asarray(poly, float)]
    pts = clip(pts, lambda p: p[0] >= r0, cut_at(r0))
    if pts:
        pts = clip(pts, lambda p: p[0] <= r1, cut_at(r1))
    return np.asarray(pts, float).reshape(-1, 2)


def _rounded_rect(rc, cc, h, w, angle, n=40, power=5.0) -> np.ndarray:
    """Superellipse outline centred at (rc, cc), height h, width w, tilted by angle (rad)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ct, st = np.cos(t), np.sin(t)
    x = (w / 2) * np.sign(ct) * np.abs(ct) ** (2 / power)
    y = (h / 2) * np.sign(st) * np.abs(st) ** (2 / power)
    ca, sa = np.cos(angle), np.sin(angle)
    rows = rc + y * ca + x * sa
    cols = cc + x * ca - y * sa
    return np.stack([rows, cols], 1)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (numpy only)."""
    rad = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, rad, mode="edge")
    tmp = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, pad)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, tmp)


def _band(img, p0, p1, width, value, rng) -> None:
    """Paint a straight bright band from p0 to p1 (row, col) with the max rule."""
    h, w = img.shape
    n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1])) * 2) + 2
    rr, cc = np.mgrid[0:h, 0:w]
    pts = np.linspace(p0, p1, n)
    r_lo = int(max(0, min(p0[0], p1[0]) - width - 1))
    r_hi = int(min(h, max(p0[0], p1[0]) + width + 2))
    c_lo = int(max(0, min(p0[1], p1[1]) - width - 1))
    c_hi = int(min(w, max(p0[1], p1[1]) + width + 2))
    if r_lo >= r_hi or c_lo >= c_hi:
        return
    sub_r, sub_c = rr[r_lo:r_hi, c_lo:c_hi], cc[r_lo:r_hi, c_lo:c_hi]
    d = np.full(sub_r.shape, np.inf)
    for r, c in pts:
        d = np.minimum(d, np.hypot(sub_r - r, sub_c - c))
    paint = np.where(d <= width, value * (1 - 0.3 * d / max(width, 1e-6)), 0)
    img[r_lo:r_hi, c_lo:c_hi] = np.maximum(img[r_lo:r_hi, c_lo:c_hi], paint)


def synth_spine(
    rng: np.random.Generator,
    size: tuple[int, int] = (256, 128),
    partial: bool = False,
    min_visible: float = 0.5,
) -> tuple[np.ndarray, list[VertebraAnnotation]]:
    """One synthetic sagittal MIP (float32 HU, (rows, cols)) and its vertebra outlines.

    ``size`` is (height, width) in px of the full column image; with ``partial`` a random
    run of rows (at least 40 % of the height) is kept and vertebrae less than
    ``min_visible`` visible are dropped.
    """
    height, width = int(size[0]), int(size[1])
    if height < 64 or width < 32:
        raise ValueError(f"synthetic image size {size} is too small (at least 64 x 32 px)")
    img = np.zeros((height, width), float)
    # vertebra heights grow downward; discs ~25 %
    growth = rng.uniform(1.5, 1.9)
    rel_h = np.linspace(1.0, growth, _NV) * rng.uniform(0.92, 1.08, _NV)
    rel_d = rel_h * rng.uniform(0.22, 0.32, _NV)
    sacrum_rel = rel_h[-1] * rng.uniform(1.8, 2.4)
    total_rel = rel_h.sum() + rel_d.sum() + sacrum_rel
    length = height * rng.uniform(0.84, 0.94)
    scale = length / total_rel
    h = rel_h * scale
    d = rel_d * scale
    top = rng.uniform(0.02, max(0.03, (height - length) / height - 0.01)) * height
    # centre line: col as a function of the position along the column (0..1)
    base_c = width * rng.uniform(0.3, 0.4)
    kyph = width * rng.uniform(0.04, 0.1)
    lord = width * rng.uniform(0.03, 0.08)
    tilt = width * rng.uniform(-0.05, 0.05)

    def centre_col(s: float) -> float:
        return (
            base_c
            + tilt * (s - 0.5)
            + kyph * np.sin(np.pi * np.clip(s / 0.65, 0, 1))
            - lord * np.sin(np.pi * np.clip((s - 0.62) / 0.38, 0, 1))
        )

    anns: list[VertebraAnnotation] = []
    row = top
    body_w_rel = rng.uniform(1.1, 1.35)
    for i in range(_NV):
        rc = row + h[i] / 2
        s = (rc - top) / length
        cc = centre_col(s)
        ds = 0.01
        slope = (centre_col(s + ds) - centre_col(s - ds)) / (2 * ds * length)
        angle = -np.arctan(slope)
        w_i = h[i] * body_w_rel * rng.uniform(0.95, 1.05) * (1 + 0.15 * i / _NV)
        poly = _rounded_rect(rc, cc, h[i], w_i, angle, power=rng.uniform(4, 7))
        mask = fill_polygon(poly, img.shape)
        # cancellous interior + brighter cortical rim
        inner = fill_polygon(_rounded_rect(rc, cc, h[i] - 3, w_i - 3, angle), img.shape)
        body_val = rng.uniform(350, 600)
        rim_val = body_val + rng.uniform(250, 600)
        img[mask] = np.maximum(img[mask], rim_val)
        img[inner] = np.maximum(img[inner], body_val)
        # posterior elements: pedicle/lamina band and spinous process sloping down
        pc = cc + w_i / 2 + 1
        spin_len = w_i * rng.uniform(0.7, 1.1)
        _band(
            img,
            (rc - h[i] * 0.15, pc),
            (rc + h[i] * 0.1, pc + w_i * 0.35),
            max(1.0, h[i] * 0.28),
            rng.uniform(400, 700),
            rng,
        )
        drop = 0.9 if i < 12 else 0.3  # thoracic spinous processes point further down
        _band(
            img,
            (rc, pc + w_i * 0.35),
            (rc + h[i] * drop, pc + w_i * 0.35 + spin_len),
            max(1.0, h[i] * 0.16),
            rng.uniform(350, 650),
            rng,
        )
        if i < 12:  # ribs: oblique bands from the costovertebral joint
            for sign, length_f in ((1, rng.uniform(0.9, 1.4)), (-1, rng.uniform(0.4, 0.8))):
                end_c = pc + sign * w_i * length_f
                _band(
                    img,
                    (rc - h[i] * 0.2, pc - 1),
                    (rc + h[i] * rng.uniform(0.6, 1.2), end_c),
                    max(0.8, h[i] * 0.12),
                    rng.uniform(250, 450),
                    rng,
                )
        anns.append(VertebraAnnotation(i + 1, [poly]))
        row += h[i] + d[i]
    # sacrum: a wide wedge tilted posteriorly below L5, with fused segment lines
    s_h = sacrum_rel * scale
    rc = row + s_h / 2
    cc = centre_col(1.0) + width * 0.06
    s_w = h[-1] * body_w_rel * 1.25
    sac = fill_polygon(_rounded_rect(rc, cc, s_h, s_w, -0.5, power=3.0), img.shape)
    img[sac] = np.maximum(img[sac], rng.uniform(400, 650))
    for k in range(1, 4):
        r = row + s_h * k / 4
        c = cc + (r - rc) * 0.5
        _band(img, (r, c - s_w * 0.4), (r - 1, c + s_w * 0.4), 0.7, 0.0, rng)
    # soft noise, calcified specks; then the 100..1500 HU window (outside -> 0)
    img = _blur(img, 0.7)
    img *= rng.uniform(0.85, 1.15)
    img += rng.normal(0, 40, img.shape)
    n_specks = rng.integers(0, 12)
    for _ in range(n_specks):
        r, c = rng.integers(0, height), rng.integers(0, width // 3)
        img[max(0, r - 1) : r + 1, max(0, c - 1) : c + 1] += rng.uniform(150, 400)
    img += 60 * _blur(rng.normal(0, 1, img.shape), 3.0)
    img = np.where((img >= 100) & (img <= 1500), img, np.where(img > 1500, 1500, 0))
    image = img.astype(np.float32)
    if partial:
        keep_h = int(rng.uniform(0.4, 1.0) * height)
        r0 = int(rng.integers(0, height - keep_h + 1))
        r1 = r0 + keep_h
        image = image[r0:r1].copy()
        kept = []
        for a in anns:
            poly = a.polygons[0]
            full = _poly_area(poly)
            clipped = clip_polygon_rows(poly, r0, r1 - 1)
            if len(clipped) >= 3 and _poly_area(clipped) >= min_visible * full:
                kept.append(VertebraAnnotation(a.class_id, [clipped - [r0, 0]]))
        anns = kept
    return image, anns


def _poly_area(poly: np.ndarray) -> float:
    y, x = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def synth_dataset(
    n: int,
    size: tuple[int, int] = (256, 128),
    partial: bool = False,
    seed: int = 0,
    prefix: str = "synth",
) -> list[AnnotatedImage]:
    """``n`` synthetic images as :class:`AnnotatedImage` (image float32 HU; one scan each)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image, anns = synth_spine(rng, size, partial=partial and i % 2 == 1)
        name = f"{prefix}_{i:04d}"
        out.append(
            AnnotatedImage(
                file_name=f"{name}.png",
                height=image.shape[0],
                width=image.shape[1],
                annotations=anns,
                image=image,
                scan=name,
                meta={"synthetic": True},
            )
        )
    return out


def write_synth(
    out_dir: str | os.PathLike,
    n: int,
    size: tuple[int, int] = (256, 128),
    partial: bool = False,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    progress: ProgressCallback | None = None,
) -> dict[str, int]:
    """Write ``n`` synthetic MIPs as COCO splits ``out_dir/{train,val,test}``.

    Same layout as ``dataset build``: each split folder holds ``annotations.json`` and
    16-bit PNG images. ``fractions`` are the train/val/test shares (each split gets at
    least one image when n >= 3). With ``partial`` every other image is a random run of
    rows. Returns {split: number of images}.
    """
    from napari_vertebra.annotation.coco import write_coco

    if n < 3:
        raise ValueError(f"need at least 3 synthetic images (train, val, test); got {n}")
    f = np.asarray(fractions, float)
    f = f / f.sum()
    n_val = max(1, round(n * f[1]))
    n_test = max(1, round(n * f[2]))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{n} images leave none for training")
    counts = {"train": n_train, "val": n_val, "test": n_test}
    out = Path(out_dir)
    for k, (split, count) in enumerate(counts.items()):
        report(progress, k / 3, f"synthesising {split}")
        images = synth_dataset(count, size, partial, seed=seed * 1000 + k, prefix=split)
        write_coco(images, out / split)
    report(progress, 1.0, "done")
    return counts
