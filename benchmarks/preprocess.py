"""Benchmark of the preprocessing pipeline on a synthetic CT.

    .venv/bin/python benchmarks/preprocess.py [--shape 600 512 512] [--spacing 1.0 0.7 0.7]

Builds a synthetic CT (body ellipse, a lordotic lumbar-like spine whose vertebrae have a
body, a bony ring round the canal at pedicle levels, spinous and transverse processes,
discs; two iliac wings with a round foramen each in the lower part), saves it once, then
in fresh subprocesses times (a) ``run_pipeline`` step by step, (b) a bare SimpleITK
linear resample of the same volume to 1 mm (the floor, on SimpleITK's default number of
threads), (c) the pipeline's resampler alone (``resample_isotropic``: separable in numpy
for a volume on LPS axes) and (d) the resample of (b) from the numpy volume, as the
pipeline would have to run it through SimpleITK (copied in, ``sitk.Resample``, copied
out), each with its peak resident memory (``ru_maxrss`` of that subprocess, which
includes the loaded input volume) and its CPU time (all threads; steadier than the wall
clock on a loaded machine). ``--repeat N`` runs each N times, interleaved, and keeps the
fastest of each.
``--rotate DEG`` turns the volume's direction by DEG about z (an oblique scan: the
resample then straightens it onto LPS axes through SimpleITK; the bare resample gets the
same rotated image onto an axis-aligned grid of the same size).

:func:`synthetic_ct` is also used by the tests (loaded from this file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def synthetic_ct(
    shape: tuple[int, int, int] = (600, 512, 512),
    spacing: tuple[float, float, float] = (1.0, 0.7, 0.7),
    hips: str = "both",
    seed: int = 0,
    body_mm: tuple[float, float] = (22.0, 17.0),
    body_hu: int = 260,
) -> tuple[np.ndarray, dict]:
    """A synthetic (z, y, x) LPS CT in HU (int16) and its ground truth.

    ``hips``: "both", "left", "right" or "none"; ``body_mm`` the vertebral bodies' half
    widths (x, y) and ``body_hu`` their cancellous bone (below 100 HU: osteoporotic
    marrow, a canal-sized hole in front of the canal for small bodies). Ground truth:
    ``canal`` (nz, 2) canal centre (y, x) in voxels per slice, ``ring`` (nz,) bool, True
    where the bony ring round the canal is closed, ``spine_x_mm`` and ``hip_x_mm`` (x of
    the hip foramina).
    """
    nz, ny, nx = shape
    sz, sy, sx = spacing
    rng = np.random.default_rng(seed)
    yy = (np.arange(ny) - (ny - 1) / 2) * sy  # mm, anterior negative
    xx = (np.arange(nx) - (nx - 1) / 2) * sx  # mm, right negative
    Y, X = np.meshgrid(yy, xx, indexing="ij")
    body = (X / 160.0) ** 2 + (Y / 115.0) ** 2 <= 1.0
    base = np.where(body, 40, -1000).astype(np.int16)
    noise = rng.integers(-25, 26, size=(ny, nx), dtype=np.int16)
    out = np.empty(shape, np.int16)
    canal = np.zeros((nz, 2))
    ring = np.zeros(nz, bool)
    period = 36.0  # mm per vertebra (body + disc)
    hip_x = {"both": (-85.0, 85.0), "left": (85.0,), "right": (-85.0,), "none": ()}[hips]
    for z in range(nz):
        zm = z * sz
        cy = 40.0 + 12.0 * np.sin(zm / (nz * sz) * np.pi)  # lordosis, mm
        cx = 3.0 * np.sin(zm / 150.0)
        canal[z] = (cy / sy + (ny - 1) / 2, cx / sx + (nx - 1) / 2)
        s = base.copy()
        phase = (zm % period) / period
        dx, dy = X - cx, Y - cy
        r = np.hypot(dx, dy)
        if phase < 0.8:  # vertebra; the rest is a disc
            # vertebral body: cortical shell and cancellous bone, anterior to the canal
            rb = np.hypot(dx / body_mm[0], (dy + 30.0) / body_mm[1])
            s[rb <= 1.0] = body_hu
            s[(rb > 0.88) & (rb <= 1.0)] = 750
            if 0.15 < phase < 0.6:  # pedicles and laminae close the ring
                ring[z] = True
                s[(r >= 8.5) & (r <= 13.0)] = 650
                s[(np.abs(dx) <= 3.5) & (dy > 12.0) & (dy < 42.0)] = 600  # spinous
                s[(np.abs(dy) <= 4.0) & (np.abs(dx) > 12.0) & (np.abs(dx) < 40.0)] = 600
            elif phase >= 0.6:  # only the lamina arc behind the canal (open ring)
                s[(r >= 8.5) & (r <= 13.0) & (dy > 4.0)] = 600
        else:
            rb = np.hypot(dx / body_mm[0], (dy + 30.0) / body_mm[1])
            s[rb <= 1.0] = 80  # disc
        if zm < 0.4 * nz * sz:  # pelvis: iliac wings with a round foramen
            for hx in hip_x:
                d = np.hypot(X - hx, Y - 10.0)
                s[(d >= 10.0) & (d <= 17.0)] = 700
                wing = (np.abs(X - np.sign(hx) * 110.0) <= 6.0) & (np.abs(Y + 10.0) <= 50.0)
                s[wing] = 700
        s += noise[:, ::-1] if z % 2 else noise
        out[z] = s
    truth = {"canal": canal, "ring": ring, "spine_x_mm": 0.0, "hip_x_mm": hip_x}
    return out, truth


def _child_pipeline(path: str) -> dict:
    import resource

    import SimpleITK as sitk  # noqa: F401
    import sklearn.cluster  # noqa: F401  (import cost is not pipeline time)

    from napari_vertebra.core import Volume, run_pipeline

    meta = json.loads(Path(path + ".json").read_text(encoding="utf-8"))
    arr = np.load(path)
    vol = Volume(arr, spacing=tuple(meta["spacing"]), direction=_rotation_z(meta["rotate"]))
    t, c = time.perf_counter(), time.process_time()
    res = run_pipeline(vol)
    total, cpu = time.perf_counter() - t, time.process_time() - c
    truth = np.load(path + ".canal.npy")
    # canal error on found slices, in mm (resampled grid is 1 mm from the same origin)
    zr = res.canal_centres[:, 0] * res.resampled.spacing[0] / meta["spacing"][0]
    zi = np.clip(np.rint(zr).astype(int), 0, len(truth) - 1)
    ty = truth[zi, 0] * meta["spacing"][1]
    tx = truth[zi, 1] * meta["spacing"][2]
    err = np.hypot(res.canal_centres[:, 1] - ty, res.canal_centres[:, 2] - tx)
    return {
        "total_s": total,
        "cpu_s": cpu,
        "steps_s": res.timings,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "resampled_shape": res.resampled.shape,
        "crop_box": res.crop_box,
        "found_fraction": res.found_fraction,
        # the truth is on the unrotated grid: no error figure for a rotated scan
        "canal_median_error_mm": float(np.median(err)) if not meta["rotate"] else None,
    }


def _child_resample(path: str) -> dict:
    import resource

    import SimpleITK as sitk

    meta = json.loads(Path(path + ".json").read_text(encoding="utf-8"))
    img = sitk.GetImageFromArray(np.load(path))
    img.SetSpacing(tuple(meta["spacing"][::-1]))
    img.SetDirection(tuple(_rotation_z(meta["rotate"]).ravel()))
    size = [round(n * s) for n, s in zip(img.GetSize(), img.GetSpacing(), strict=True)]
    t, c = time.perf_counter(), time.process_time()
    sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), (1.0, 1.0, 1.0))
    total, cpu = time.perf_counter() - t, time.process_time() - c
    return {
        "total_s": total,
        "cpu_s": cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
    }


def _child_resampler(path: str, through_sitk: bool) -> dict:
    """The pipeline's resample step alone, or the same grid through SimpleITK."""
    import resource

    import SimpleITK as sitk

    from napari_vertebra.core import Volume, resample_isotropic

    meta = json.loads(Path(path + ".json").read_text(encoding="utf-8"))
    vol = Volume(
        np.load(path), spacing=tuple(meta["spacing"]), direction=_rotation_z(meta["rotate"])
    )
    t, c = time.perf_counter(), time.process_time()
    if through_sitk:
        img = vol.to_sitk()
        size = [round(n * s) for n, s in zip(img.GetSize(), img.GetSpacing(), strict=True)]
        out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                            (1.0, 1.0, 1.0), tuple(np.eye(3).ravel()), -1024.0)  # fmt: skip
        del img
        sitk.GetArrayFromImage(out)
    else:
        resample_isotropic(vol)
    total, cpu = time.perf_counter() - t, time.process_time() - c
    return {
        "total_s": total,
        "cpu_s": cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _rotation_z(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


def _run_child(kind: str, path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, path],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"{kind} child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Build the phantom, time pipeline and bare resample, print a report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(600, 512, 512), metavar=("Z", "Y", "X"))
    ap.add_argument("--spacing", type=float, nargs=3, default=(1.0, 0.7, 0.7))
    ap.add_argument("--repeat", type=int, default=1, help="runs of each; the best is kept")
    ap.add_argument("--rotate", type=float, default=0.0, metavar="DEG",
                    help="turn the direction by DEG about z (an oblique scan)")  # fmt: skip
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, path = args.child
        if kind in ("numpy", "sitk"):
            res = _child_resampler(path, kind == "sitk")
        else:
            res = _child_pipeline(path) if kind == "pipeline" else _child_resample(path)
        print(json.dumps(res))
        return 0

    t = time.perf_counter()
    arr, truth = synthetic_ct(tuple(args.shape), tuple(args.spacing))
    t_gen = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ct.npy")
        np.save(path, arr)
        np.save(path + ".canal.npy", truth["canal"])
        Path(path + ".json").write_text(
            json.dumps({"spacing": list(args.spacing), "rotate": args.rotate}), encoding="utf-8"
        )
        del arr
        runs: dict[str, list[dict]] = {k: [] for k in ("resample", "pipeline", "numpy", "sitk")}
        for _ in range(args.repeat):  # interleaved: a change of load hits all alike
            for kind, out in runs.items():
                out.append(_run_child(kind, path))
        bare, pipe, own, via = (min(r, key=lambda r: r["total_s"]) for r in runs.values())
    z, y, x = args.shape
    print(f"synthetic CT {x} x {y} x {z} voxels at {' x '.join(map(str, args.spacing[::-1]))} mm "
          f"(x y z), int16, direction turned {args.rotate:g} deg about z; generated in "
          f"{t_gen:.1f} s; {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    print(
        f"resampled grid (z, y, x): {tuple(pipe['resampled_shape'])}, crop box {pipe['crop_box']}"
    )
    err = pipe["canal_median_error_mm"]
    print(f"canal found on {100 * pipe['found_fraction']:.0f}% of slices, median error "
          + (f"{err:.2f} mm" if err is not None else "n/a (rotated)"))  # fmt: skip
    print("pipeline steps (s): " + ", ".join(f"{k} {v:.2f}" for k, v in pipe["steps_s"].items()))
    print(f"pipeline total:        {pipe['total_s']:6.2f} s (CPU {pipe['cpu_s']:6.2f} s)   "
          f"peak RSS {pipe['peak_rss_mb']:6.0f} MB")  # fmt: skip
    b_s, b_mb = bare["total_s"], bare["peak_rss_mb"]
    print(f"bare SimpleITK resample:{b_s:6.2f} s (CPU {bare['cpu_s']:6.2f} s)   "
          f"peak RSS {b_mb:6.0f} MB   ({bare['threads']} threads)")  # fmt: skip
    print(f"resample_isotropic:    {own['total_s']:6.2f} s (CPU {own['cpu_s']:6.2f} s)   "
          f"peak RSS {own['peak_rss_mb']:6.0f} MB   (the pipeline's step alone)")  # fmt: skip
    print(f"via SimpleITK:         {via['total_s']:6.2f} s (CPU {via['cpu_s']:6.2f} s)   "
          f"peak RSS {via['peak_rss_mb']:6.0f} MB   (copy in, Resample, copy out)")  # fmt: skip
    ratio = pipe["total_s"] / bare["total_s"]
    ratio_cpu = pipe["cpu_s"] / bare["cpu_s"]
    ok_t, ok_m = pipe["total_s"] < 10, pipe["peak_rss_mb"] < 3072
    print(f"ratio pipeline / bare resample: {ratio:.2f} wall, {ratio_cpu:.2f} CPU (target <= 2), "
          f"pipeline < 10 s: {ok_t}, peak < 3 GB: {ok_m}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
