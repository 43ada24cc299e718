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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from napari_vertebra.annotation.partial import crop_view, draw_window
from napari_vertebra.annotation.polygons import mask_to_polygons, polygon_area, rasterize
from napari_vertebra.annotation.types import AnnotatedImage, VertebraAnnotation
from napari_vertebra.core.labels import LEVEL_IDS, VERTEBRAE, ClassSet, get_class_set
from napari_vertebra.core.progress import ProgressCallback, report
from napari_vertebra.model.spine import BODY_HEIGHT_MM, DISC_HEIGHT_MM, variant_levels

__all__ = [
    "LUMBAR_COUNT_RATES",
    "THORACIC_COUNT_RATES",
    "clip_polygon_rows",
    "synth_column",
    "synth_column_dataset",
    "synth_dataset",
    "synth_spine",
    "synth_views",
    "write_synth",
    "write_synth_columns",
]

_NV = len(VERTEBRAE)


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


def _band(img, p0, p1, width, value) -> np.ndarray:
    """Paint a straight bright band from p0 to p1 (row, col) with the max rule; its mask."""
    h, w = img.shape
    n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1])) * 2) + 2
    rr, cc = np.mgrid[0:h, 0:w]
    pts = np.linspace(p0, p1, n)
    r_lo = int(max(0, min(p0[0], p1[0]) - width - 1))
    r_hi = int(min(h, max(p0[0], p1[0]) + width + 2))
    c_lo = int(max(0, min(p0[1], p1[1]) - width - 1))
    c_hi = int(min(w, max(p0[1], p1[1]) + width + 2))
    mask = np.zeros((h, w), bool)
    if r_lo >= r_hi or c_lo >= c_hi:
        return mask
    sub_r, sub_c = rr[r_lo:r_hi, c_lo:c_hi], cc[r_lo:r_hi, c_lo:c_hi]
    d = np.full(sub_r.shape, np.inf)
    for r, c in pts:
        d = np.minimum(d, np.hypot(sub_r - r, sub_c - c))
    paint = np.where(d <= width, value * (1 - 0.3 * d / max(width, 1e-6)), 0)
    img[r_lo:r_hi, c_lo:c_hi] = np.maximum(img[r_lo:r_hi, c_lo:c_hi], paint)
    mask[r_lo:r_hi, c_lo:c_hi] = d <= width
    return mask


def _draw_vertebra(
    img: np.ndarray,
    rng: np.random.Generator,
    rc: float,
    cc: float,
    h: float,
    w: float,
    angle: float,
    power: float,
    rib_scale: float | None,
    rib_hu: tuple[float, float] = (250, 450),
    rib_width: float = 0.12,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one vertebra (body, posterior elements, ribs) into ``img`` (max rule).

    Returns the body outline ((N, 2) row, col) and the mask of body plus posterior
    elements (pedicle / lamina and spinous process; not the ribs). ``rib_scale`` scales
    the rib length (None: no ribs, a vertebra that is not thoracic); ``rib_hu`` is the
    range of the ribs' value and ``rib_width`` their half-width as a fraction of the body
    height. The order of the random draws is the generator's contract (the seeded data
    sets of the tests depend on it).
    """
    poly = _rounded_rect(rc, cc, h, w, angle, power=power)
    mask = rasterize(poly, img.shape)
    # cancellous interior + brighter cortical rim
    inner = rasterize(_rounded_rect(rc, cc, h - 3, w - 3, angle), img.shape)
    body_val = rng.uniform(350, 600)
    rim_val = body_val + rng.uniform(250, 600)
    img[mask] = np.maximum(img[mask], rim_val)
    img[inner] = np.maximum(img[inner], body_val)
    pc = cc + w / 2 + 1  # the posterior edge of the body
    whole = mask | _draw_posterior(img, rng, rc, pc, h, w, thoracic=rib_scale is not None)
    if rib_scale is not None:  # ribs: oblique bands from the costovertebral joint
        for sign, length_f in ((1, rng.uniform(0.9, 1.4)), (-1, rng.uniform(0.4, 0.8))):
            end_c = pc + sign * w * length_f * rib_scale
            _band(
                img,
                (rc - h * 0.2, pc - 1),
                (rc + h * rng.uniform(0.6, 1.2) * max(rib_scale, 0.3), end_c),
                max(0.8, h * rib_width),
                rng.uniform(*rib_hu),
            )
    return poly, whole


def _draw_posterior(
    img: np.ndarray,
    rng: np.random.Generator,
    rc: float,
    pc: float,
    h: float,
    w: float,
    thoracic: bool,
) -> np.ndarray:
    """Paint the posterior elements behind a body (centre row ``rc``, posterior edge
    ``pc``, height ``h``, width ``w``): the pedicle / lamina band and the spinous process
    sloping down (further on a thoracic vertebra). Returns their mask."""
    spin_len = w * rng.uniform(0.7, 1.1)
    lamina = _band(
        img,
        (rc - h * 0.15, pc),
        (rc + h * 0.1, pc + w * 0.35),
        max(1.0, h * 0.28),
        rng.uniform(400, 700),
    )
    drop = 0.9 if thoracic else 0.3  # thoracic spinous processes point further down
    spinous = _band(
        img,
        (rc, pc + w * 0.35),
        (rc + h * drop, pc + w * 0.35 + spin_len),
        max(1.0, h * 0.16),
        rng.uniform(350, 650),
    )
    return lamina | spinous


def _draw_stack(
    img: np.ndarray,
    rng: np.random.Generator,
    centre_col,
    body_w_rel: float,
    h: np.ndarray,
    d: np.ndarray,
    top: float,
    ribs: Sequence[float | None],
    **rib_kw,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """Paint vertebrae top to bottom from row ``top``: body heights ``h`` (px) with a
    disc of ``d`` below each, centred on the column line ``centre_col`` (see
    :func:`_centre_line`), bodies ``body_w_rel`` times as wide as high (+-5 %, wider
    downward), ``ribs[k]`` the rib scale of vertebra k (see :func:`_draw_vertebra`,
    which gets ``rib_kw``). Returns (body outline, mask) per vertebra and the row below
    the last disc."""
    drawn = []
    row = top
    for k in range(len(h)):
        rc = row + h[k] / 2
        cc, angle = centre_col(rc)
        w_k = h[k] * body_w_rel * rng.uniform(0.95, 1.05) * (1 + 0.15 * k / len(h))
        power = rng.uniform(4, 7)
        drawn.append(_draw_vertebra(img, rng, rc, cc, h[k], w_k, angle, power, ribs[k], **rib_kw))
        row += h[k] + d[k]
    return drawn, row


def _outline(poly: np.ndarray, whole: np.ndarray, outline: str) -> list[np.ndarray]:
    """The annotation polygons of a vertebra: its body outline or its whole outline."""
    if outline == "body":
        return [poly]
    parts = mask_to_polygons(whole, tolerance_px=0.5, min_area_px=4)
    return parts[:1] if parts else [poly]


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, gain, noise, calcified specks, then the 100..1500 HU window (outside -> 0)."""
    height, width = img.shape
    img = _blur(img, 0.7)
    img *= rng.uniform(0.85, 1.15)
    img += rng.normal(0, 40, img.shape)
    n_specks = rng.integers(0, 12)
    for _ in range(n_specks):
        r, c = rng.integers(0, height), rng.integers(0, width // 3)
        img[max(0, r - 1) : r + 1, max(0, c - 1) : c + 1] += rng.uniform(150, 400)
    img += 60 * _blur(rng.normal(0, 1, img.shape), 3.0)
    img = np.where((img >= 100) & (img <= 1500), img, np.where(img > 1500, 1500, 0))
    return img.astype(np.float32)


def _check_outline(outline: str) -> None:
    if outline not in ("body", "whole"):
        raise ValueError(f"outline must be 'body' or 'whole', got {outline!r}")


def synth_spine(
    rng: np.random.Generator,
    size: tuple[int, int] = (256, 128),
    partial: bool = False,
    min_visible: float = 0.5,
    outline: str = "body",
) -> tuple[np.ndarray, list[VertebraAnnotation]]:
    """One synthetic sagittal MIP (float32 HU, (rows, cols)) and its vertebra outlines.

    ``size`` is (height, width) in px of the full column image; with ``partial`` a random
    run of rows (at least 40 % of the height) is kept and vertebrae less than
    ``min_visible`` visible are dropped. ``outline``: ``"body"`` (default, the vertebral
    bodies) or ``"whole"`` (body and posterior elements, as labels from 3D outline
    them). T1..L5 only, scaled to the image; :func:`synth_column` draws the anatomy at a
    physical scale with its variants.
    """
    _check_outline(outline)
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
    top = rng.uniform(0.02, max(0.03, (height - length) / height - 0.01)) * height
    centre_col = _centre_line(rng, width, top, length)
    body_w_rel = rng.uniform(1.1, 1.35)
    ribs = [1.0 if i < 12 else None for i in range(_NV)]
    drawn, row = _draw_stack(img, rng, centre_col, body_w_rel, h, rel_d * scale, top, ribs)
    anns = [VertebraAnnotation(i + 1, _outline(p, m, outline)) for i, (p, m) in enumerate(drawn)]
    # sacrum: a wide wedge tilted posteriorly below L5, with fused segment lines
    s_w = h[-1] * body_w_rel * 1.25
    _draw_sacrum(img, rng, row, sacrum_rel * scale, centre_col(top + length)[0], s_w)
    image = _finish(img, rng)
    if partial:
        image, anns = _keep_rows(image, anns, rng, min_visible)
    return image, anns


def _keep_rows(
    image: np.ndarray,
    anns: list[VertebraAnnotation],
    rng: np.random.Generator,
    min_visible: float,
) -> tuple[np.ndarray, list[VertebraAnnotation]]:
    """A random run of rows of ``image`` (at least 40 % of them) and the parts of ``anns``
    in it, each kept when at least ``min_visible`` of its area is."""
    height = image.shape[0]
    keep_h = int(rng.uniform(0.4, 1.0) * height)
    r0 = int(rng.integers(0, height - keep_h + 1))
    r1 = r0 + keep_h
    kept = []
    for a in anns:
        parts = []
        for poly in a.polygons:
            clipped = clip_polygon_rows(poly, r0, r1 - 1)
            if len(clipped) >= 3 and polygon_area(clipped) >= min_visible * polygon_area(poly):
                parts.append(clipped - [r0, 0])
        if parts:
            kept.append(VertebraAnnotation(a.class_id, parts))
    return image[r0:r1].copy(), kept


def _centre_line(rng: np.random.Generator, width: float, top: float, length: float):
    """A gently curved column (kyphosis, lordosis): row -> (centre col, body tilt in rad)."""
    base_c = width * rng.uniform(0.3, 0.4)
    kyph = width * rng.uniform(0.04, 0.1)
    lord = width * rng.uniform(0.03, 0.08)
    tilt = width * rng.uniform(-0.05, 0.05)

    def col_at(s: float) -> float:
        return (
            base_c
            + tilt * (s - 0.5)
            + kyph * np.sin(np.pi * np.clip(s / 0.65, 0, 1))
            - lord * np.sin(np.pi * np.clip((s - 0.62) / 0.38, 0, 1))
        )

    def centre(row: float) -> tuple[float, float]:
        s = (row - top) / length
        ds = 0.01
        slope = (col_at(s + ds) - col_at(s - ds)) / (2 * ds * length)
        return col_at(s), -np.arctan(slope)

    return centre


def _draw_sacrum(img, rng, row: float, s_h: float, col_end: float, s_w: float) -> np.ndarray:
    """Paint the sacrum (a wedge tilted posteriorly, fused segment lines) below ``row``.

    ``col_end`` is the column line's centre at its lower end; returns the wedge's outline.
    """
    width = img.shape[1]
    rc = row + s_h / 2
    cc = col_end + width * 0.06
    outline = _rounded_rect(rc, cc, s_h, s_w, -0.5, power=3.0)
    sac = rasterize(outline, img.shape)
    img[sac] = np.maximum(img[sac], rng.uniform(400, 650))
    for k in range(1, 4):
        r = row + s_h * k / 4
        c = cc + (r - rc) * 0.5
        _band(img, (r, c - s_w * 0.4), (r - 1, c + s_w * 0.4), 0.7, 0.0)
    return outline


def synth_dataset(
    n: int,
    size: tuple[int, int] = (256, 128),
    partial: bool = False,
    seed: int = 0,
    prefix: str = "synth",
    outline: str = "body",
) -> list[AnnotatedImage]:
    """``n`` synthetic images as :class:`AnnotatedImage` (image float32 HU; one scan each).

    ``outline`` as in :func:`synth_spine` (``"body"``, the default, or ``"whole"``).
    """
    _check_outline(outline)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image, anns = synth_spine(rng, size, partial=partial and i % 2 == 1, outline=outline)
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
    outline: str = "body",
) -> dict[str, int]:
    """Write ``n`` synthetic MIPs as COCO splits ``out_dir/{train,val,test}``.

    Same layout as ``dataset build``: each split folder holds ``annotations.json`` and
    16-bit PNG images. ``fractions`` are the train/val/test shares (each split gets at
    least one image when n >= 3). With ``partial`` every other image is a random run of
    rows. ``outline``: ``"body"`` (default) or ``"whole"``. Returns {split: number of
    images}.
    """
    from napari_vertebra.annotation.coco import write_coco

    _check_outline(outline)
    counts = _split_counts(n, fractions, "synthetic images")
    out = Path(out_dir)
    for k, (split, count) in enumerate(counts.items()):
        report(progress, k / 3, f"synthesising {split}")
        images = synth_dataset(
            count, size, partial, seed=seed * 1000 + k, prefix=split, outline=outline
        )
        write_coco(images, out / split)
    report(progress, 1.0, "done")
    return counts


def _split_counts(n: int, fractions: Sequence[float], what: str) -> dict[str, int]:
    """{train, val, test: count} for n items (each split at least one)."""
    if n < 3:
        raise ValueError(f"need at least 3 {what} (train, val, test); got {n}")
    f = np.asarray(fractions, float)
    f = f / f.sum()
    n_val = max(1, round(n * f[1]))
    n_test = max(1, round(n * f[2]))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{n} {what.split()[-1]} leave none for training")
    return {"train": n_train, "val": n_val, "test": n_test}


# ----------------------------------------------------------------------------- anatomy at scale

#: Frequencies of the thoracic (rib-bearing) count drawn by :func:`synth_column`:
#: 11 (T12 absent) 5 %, 13 (T13) 1 %. Approximate; sources in docs/levels.md.
THORACIC_COUNT_RATES: dict[int, float] = {11: 0.05, 12: 0.94, 13: 0.01}
#: Frequencies of the lumbar count: 6 (L6) 5 %. Approximate; sources in docs/levels.md.
LUMBAR_COUNT_RATES: dict[int, float] = {5: 0.95, 6: 0.05}
#: Unlabelled cervical vertebrae drawn above C7 (so that C7 is not simply the top one).
_CERVICAL_ABOVE = ("C5", "C6")
_CERVICAL_MM = 13.0


def _draw_count(rng: np.random.Generator, rates: dict[int, float], what: str) -> int:
    keys = sorted(rates)
    p = np.array([rates[k] for k in keys], float)
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"{what} rates {rates} must be non-negative and not all zero")
    return int(keys[rng.choice(len(keys), p=p / p.sum())])


def synth_column(
    rng: np.random.Generator,
    class_set: str | ClassSet | None = None,
    pixel_mm: float = 1.0,
    width_mm: float = 140.0,
    outline: str = "whole",
    thoracic: int | None = None,
    lumbar: int | None = None,
    thoracic_rates: dict[int, float] | None = None,
    lumbar_rates: dict[int, float] | None = None,
    scale_range: tuple[float, float] = (0.9, 1.1),
    name: str = "column",
) -> AnnotatedImage:
    """A full synthetic sagittal MIP at a physical scale, with its anatomy drawn in mm.

    The column runs C5..C7 (C5, C6 unlabelled), the thoracic and lumbar vertebrae of a
    spine variant (``thoracic`` 11..13, ``lumbar`` 5..6; drawn at
    :data:`THORACIC_COUNT_RATES` / :data:`LUMBAR_COUNT_RATES` or the given rates when
    None) and the sacrum. Vertebral body and disc heights follow the typical adult
    sizes of :mod:`napari_vertebra.model.levels` times a patient scale drawn uniformly
    from ``scale_range`` (+-10 %), a thoracic and a lumbar factor (+-5 %) and +-5 % per
    vertebra; the last thoracic vertebra bears a short rib (20..50 % of a full one), the
    one above a shorter one (50..90 %). ``pixel_mm`` is the pixel size (1 mm for our
    MIPs: the image is about 600 px tall); ``width_mm`` the crop width.

    Labels follow ``class_set`` (name or :class:`ClassSet`, default the paper's T1..L5):
    levels outside the set are drawn but not annotated (the paper set leaves C7, T13,
    L6 and the sacrum unlabelled, as the paper-set label conventions do); S1 is the
    whole sacrum's outline. ``outline``: ``"whole"`` (body and posterior elements, as
    labels from 3D) or ``"body"``. ``meta`` records the variant, the patient scale, the
    pixel size (``spacing_mm``, ``pixel_mm``), the class set and the levels drawn.
    """
    _check_outline(outline)
    cs = get_class_set(class_set)
    if not pixel_mm > 0:
        raise ValueError(f"pixel_mm must be positive, got {pixel_mm}")
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
    t_count = thoracic or _draw_count(rng, thoracic_rates or THORACIC_COUNT_RATES, "thoracic")
    l_count = lumbar or _draw_count(rng, lumbar_rates or LUMBAR_COUNT_RATES, "lumbar")
    spine = variant_levels(t_count, l_count)[:-1]  # C7 .. last lumbar; the sacrum apart
    levels = (*_CERVICAL_ABOVE, *spine)
    scale = rng.uniform(lo, hi)
    lay = _column_layout(rng, levels, scale, pixel_mm, width_mm)
    img = np.zeros(lay.shape, float)
    anns, level_rows = _draw_column(img, rng, levels, lay, cs, outline)
    meta = {
        "synthetic": True,
        "spacing_mm": float(pixel_mm),
        "pixel_mm": float(pixel_mm),
        "patient_scale": float(scale),
        "thoracic": t_count,
        "lumbar": l_count,
        "class_set": cs.name,
        "outline": outline,
        "level_rows": level_rows,
    }
    image = _finish(img, rng)
    return AnnotatedImage(f"{name}.png", *lay.shape, anns, image, scan=name, meta=meta)


@dataclass(frozen=True)
class _Layout:
    """Where a column's parts go (px): body heights ``h``, the disc below each ``d``, the
    first body's top row, the column's length (bodies, discs, sacrum), the sacrum's
    height and the image shape (rows, cols)."""

    h: np.ndarray
    d: np.ndarray
    top: float
    length: float
    sacrum: float
    shape: tuple[int, int]


def _column_layout(
    rng: np.random.Generator,
    levels: Sequence[str],
    scale: float,
    pixel_mm: float,
    width_mm: float,
) -> _Layout:
    """Draw the body and disc heights of ``levels`` (typical adult sizes times the patient
    ``scale``, a thoracic and a lumbar factor and +-5 % per vertebra), the sacrum and the
    margins above and below; the layout in pixels of ``pixel_mm``."""
    f_thor, f_lum = rng.uniform(0.95, 1.05, 2)

    def body_mm(lv: str) -> float:
        base = _CERVICAL_MM if lv in _CERVICAL_ABOVE else float(BODY_HEIGHT_MM[lv])
        region = f_lum if lv.startswith("L") else f_thor if lv.startswith("T") else 1.0
        return base * scale * region * rng.uniform(0.95, 1.05)

    h = np.array([body_mm(lv) for lv in levels])
    disc = []
    for k, lv in enumerate(levels):
        below = levels[k + 1] if k + 1 < len(levels) else "S1"
        base = DISC_HEIGHT_MM.get(lv, DISC_HEIGHT_MM["C7"])
        if below == "L1":
            base = DISC_HEIGHT_MM["T12"]
        disc.append(base * scale * rng.uniform(0.8, 1.2))
    d = np.array(disc)
    sacrum_mm = rng.uniform(55, 70) * scale
    top_mm = rng.uniform(5, 25)
    bottom_mm = rng.uniform(5, 25)
    length_mm = h.sum() + d.sum() + sacrum_mm
    height = int(np.ceil((top_mm + length_mm + bottom_mm) / pixel_mm))
    width = round(width_mm / pixel_mm)
    if width < 16:
        raise ValueError(f"width_mm / pixel_mm = {width} px is too narrow (at least 16 px)")
    return _Layout(
        h / pixel_mm,
        d / pixel_mm,
        top_mm / pixel_mm,
        length_mm / pixel_mm,
        sacrum_mm / pixel_mm,
        (height, width),
    )


def _draw_column(
    img: np.ndarray,
    rng: np.random.Generator,
    levels: Sequence[str],
    lay: _Layout,
    cs: ClassSet,
    outline: str,
) -> tuple[list[VertebraAnnotation], dict[str, list[int]]]:
    """Paint the vertebrae of ``levels`` and the sacrum into ``img`` along a curved column
    line; the annotations of the levels in ``cs`` and the rows of every level drawn."""
    centre_col = _centre_line(rng, img.shape[1], lay.top, lay.length)
    body_w_rel = rng.uniform(1.1, 1.35)
    thoracic_levels = [lv for lv in levels if lv.startswith("T")]
    rib_of = {lv: 1.0 for lv in thoracic_levels}
    rib_of[thoracic_levels[-1]] = rng.uniform(0.2, 0.5)
    rib_of[thoracic_levels[-2]] = rng.uniform(0.5, 0.9)
    ribs = [rib_of.get(lv) for lv in levels]
    # the ribs are visible over the posterior elements: rib-bearing is a cue
    drawn, row = _draw_stack(
        img, rng, centre_col, body_w_rel, lay.h, lay.d, lay.top, ribs,
        rib_hu=(550, 850), rib_width=0.14,
    )  # fmt: skip
    anns: list[VertebraAnnotation] = []
    level_rows: dict[str, list[int]] = {}
    for lv, (poly, whole) in zip(levels, drawn, strict=True):
        level_rows[lv] = _row_extent(whole if outline == "whole" else rasterize(poly, img.shape))
        if lv in cs.levels:
            anns.append(VertebraAnnotation(LEVEL_IDS[lv], _outline(poly, whole, outline)))
    s_w = lay.h[-1] * body_w_rel * 1.25
    sac = _draw_sacrum(img, rng, row, lay.sacrum, centre_col(lay.top + lay.length)[0], s_w)
    sac_mask = rasterize(sac, img.shape)
    level_rows["S1"] = _row_extent(sac_mask)
    if "S1" in cs.levels:
        parts = mask_to_polygons(sac_mask, tolerance_px=0.5, min_area_px=4)
        anns.append(VertebraAnnotation(LEVEL_IDS["S1"], parts[:1] or [sac]))
    return anns, level_rows


def _row_extent(mask: np.ndarray) -> list[int]:
    """[first, last + 1] row of a mask's pixels."""
    rows = np.flatnonzero(mask.any(1))
    return [int(rows[0]), int(rows[-1]) + 1] if rows.size else [0, 0]


def _view_meta(column_meta: dict, r0: float, r1: float, names: list[str]) -> dict:
    """Meta of a view of rows [r0, r1) of a column: its labelled levels and landmarks.

    ``levels``: the annotated level names, top to bottom. ``visible``: every level drawn
    (labelled or not) with at least half of its body rows in the view. ``landmarks``:
    those of C7, S1 (sacrum) and TL (the last thoracic vertebra and L1 together) that are
    visible: the same for every class set, so both sets are scored on the same views.
    """
    rows = column_meta.get("level_rows", {})
    visible = [lv for lv, (a, b) in rows.items() if min(b, r1) - max(a, r0) >= 0.5 * (b - a)]
    last_t = f"T{int(column_meta.get('thoracic', 12))}"
    landmarks = [lv for lv in ("C7", "S1") if lv in visible]
    if last_t in visible and "L1" in visible:
        landmarks.append("TL")
    base = {k: v for k, v in column_meta.items() if k != "level_rows"}
    return {**base, "levels": list(names), "visible": visible, "landmarks": landmarks}


def synth_views(
    column: AnnotatedImage,
    n_views: int,
    rng: np.random.Generator | int = 0,
    min_vertebrae: int = 4,
    max_vertebrae: int = 17,
    min_visible: float = 0.5,
    margin: tuple[float, float] = (-0.4, 0.6),
    max_tries: int = 20,
) -> list[AnnotatedImage]:
    """Partial views of a :func:`synth_column` image, cut the way the paper cuts them.

    The rules of :func:`napari_vertebra.annotation.partial.partial_views` (a run of
    ``min_vertebrae..max_vertebrae`` consecutive vertebrae, a random start, top and
    bottom margins drawn from ``margin`` times the median vertebra height; duplicates
    and views breaking the rules redrawn), applied to the column's *anatomy* C7..sacrum
    (from ``meta["level_rows"]``), not to its labels: the same seed cuts the same views
    whatever the class set, so the sets can be compared on the same images. A vertebra
    counts as in the view when at least half of its rows are; the labels are cropped
    with :func:`~napari_vertebra.annotation.partial.crop_view` (``min_visible`` of their
    pixels). Each view's ``meta`` adds ``levels``, ``visible`` and ``landmarks``.
    """
    if not 1 <= min_vertebrae <= max_vertebrae:
        raise ValueError(
            f"need 1 <= min_vertebrae <= max_vertebrae, got {min_vertebrae}, {max_vertebrae}"
        )
    if "level_rows" not in column.meta:
        raise ValueError(f"{column.file_name}: not a synth_column image (no level_rows)")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    canon = [(lv, a, b) for lv, (a, b) in column.meta["level_rows"].items() if lv in LEVEL_IDS]
    n = len(canon)
    if n < min_vertebrae:
        return []
    tops = np.array([a for _, a, _ in canon], float)
    bottoms = np.array([b for _, _, b in canon], float)
    med = float(np.median(bottoms - tops))
    stem = PurePosixPath(column.file_name).stem
    views: list[AnnotatedImage] = []
    seen: set[tuple[int, int]] = set()
    for _ in range(n_views):
        for _try in range(max_tries):
            r0, r1 = draw_window(
                rng, range(n), tops, bottoms, min_vertebrae, max_vertebrae, margin, med,
                column.height,
            )  # fmt: skip
            if r1 - r0 < 2 or (r0, r1) in seen:
                continue
            inside = np.minimum(bottoms, r1) - np.maximum(tops, r0) >= 0.5 * (bottoms - tops)
            if not min_vertebrae <= int(inside.sum()) <= max_vertebrae:
                continue
            seen.add((r0, r1))
            view = crop_view(column, r0, r1, min_visible)
            view.file_name = f"{stem}_v{len(views):03d}_rows{r0}-{r1}.png"
            names = [a.name for a in view.annotations]
            view.meta = {**view.meta, **_view_meta(column.meta, r0, r1, names)}
            views.append(view)
            break
    return views


def synth_column_dataset(
    n_columns: int,
    views_per_column: int = 4,
    class_set: str | ClassSet | None = None,
    pixel_mm: float = 1.0,
    seed: int = 0,
    prefix: str = "col",
    include_full: bool = True,
    **column_kw,
) -> list[AnnotatedImage]:
    """Full columns (:func:`synth_column`) and their partial views (:func:`synth_views`).

    Each column is one scan (``scan`` = its name), so splits keep a column and its
    views together. ``column_kw`` goes to :func:`synth_column` (outline, thoracic, rates,
    ...).
    """
    rng = np.random.default_rng(seed)
    out: list[AnnotatedImage] = []
    for i in range(n_columns):
        col = synth_column(rng, class_set, pixel_mm, name=f"{prefix}_{i:04d}", **column_kw)
        views = synth_views(col, views_per_column, rng) if views_per_column else []
        if include_full:
            names = [a.name for a in col.annotations]
            col.meta = {**_view_meta(col.meta, 0, col.height, names), "view": "full"}
            out.append(col)
        out.extend(views)
    return out


def write_synth_columns(
    out_dir: str | os.PathLike,
    n_columns: int,
    views_per_column: int = 4,
    class_set: str | ClassSet | None = None,
    pixel_mm: float = 1.0,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    progress: ProgressCallback | None = None,
    **column_kw,
) -> dict[str, int]:
    """Write :func:`synth_column_dataset` images as COCO splits ``out_dir/{train,val,test}``.

    Columns (scans) are split by ``fractions``; each split holds its columns' full images
    and partial views, with the class set's COCO categories. Returns {split: number of
    images}.
    """
    from napari_vertebra.annotation.coco import write_coco

    cs = get_class_set(class_set)
    counts = _split_counts(n_columns, fractions, "synthetic columns")
    out = Path(out_dir)
    written = {}
    for k, (split, count) in enumerate(counts.items()):
        report(progress, k / 3, f"synthesising {split}")
        images = synth_column_dataset(
            count, views_per_column, cs, pixel_mm, seed=seed * 1000 + k, prefix=split,
            **column_kw,
        )  # fmt: skip
        write_coco(images, out / split, class_set=cs)
        written[split] = len(images)
    report(progress, 1.0, "done")
    return written
