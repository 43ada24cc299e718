"""``napari-vertebra preprocess``: the preprocessing pipeline over many CT scans.

Per scan it writes into ``OUT/<scan name>-<hash>/`` (:func:`output_name`): ``mip.png``
(16-bit grey, stored ``round(HU * hu_scale)`` with the same scale as the COCO images, 40
per HU by default, see :func:`napari_vertebra.annotation.image_files.write_mip_png`), ``mip.npy``
(float32 HU), ``canal_centres.csv`` (z, y, x voxels of the resampled grid, found 0/1),
``crop_box.json`` and ``report.json`` (written last, with the warnings and decisions of
the run; a scan is done when its report names the same input, by absolute path, size and
modification time, and the same parameters).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import add_common_args, at_least

__all__ = [
    "OUTPUT_FILES",
    "discard_unfinished",
    "expand_inputs",
    "input_identity",
    "is_done",
    "output_name",
    "preprocess_one",
    "register",
    "run",
    "scan_name",
]

#: The files of a scan's folder; ``report.json`` is written last (the scan is done).
OUTPUT_FILES = ("mip.png", "mip.npy", "canal_centres.csv", "crop_box.json", "report.json")

# flag -> PreprocessParams field
_FLAGS = {
    "spacing": "spacing_mm",
    "interpolator": "interpolator",
    "hu_min": "hu_min",
    "hu_max": "hu_max",
    "canal_r_min": "canal_r_min_mm",
    "canal_r_max": "canal_r_max_mm",
    "clusters": "n_clusters",
    "margin_lr": "crop_margin_lr_mm",
    "margin_anterior": "crop_margin_anterior_mm",
    "margin_posterior": "crop_margin_posterior_mm",
}


def register(subparsers: Any) -> None:
    """Add the ``preprocess`` sub-command."""
    p = subparsers.add_parser(
        "preprocess",
        help="resample, window, find the canal, crop the spine and write sagittal MIPs",
        description=(
            "Run the preprocessing pipeline on CT scans and write per scan into "
            "OUT/<scan name>-<hash of its path>/: mip.png (16-bit, round(HU * 40) as the "
            "COCO images), mip.npy (float32 HU), canal_centres.csv, crop_box.json and "
            "report.json (with the warnings and decisions). Warnings are printed too."
        ),
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="CT",
        help="a CT file (.nii, .nii.gz, .nrrd, .mha, .mhd), a DICOM folder, or a folder of "
        "scans (every supported file and DICOM sub-folder inside)",
    )
    add_common_args(p, "output folder (a sub-folder per scan)")
    p.add_argument(
        "--params",
        metavar="JSON",
        help="parameters as a JSON object or the path of a JSON file; flags override it",
    )
    g = p.add_argument_group("parameters (default: the paper's)")
    g.add_argument("--spacing", type=float, metavar="MM", help="isotropic voxel size")
    g.add_argument("--interpolator", choices=("linear", "nearest", "bspline"))
    g.add_argument("--hu-min", type=float, metavar="HU")
    g.add_argument("--hu-max", type=float, metavar="HU")
    g.add_argument("--canal-r-min", type=float, metavar="MM")
    g.add_argument("--canal-r-max", type=float, metavar="MM")
    g.add_argument("--clusters", type=int, metavar="K", help="k of k-means")
    g.add_argument("--margin-lr", type=float, metavar="MM")
    g.add_argument("--margin-anterior", type=float, metavar="MM")
    g.add_argument("--margin-posterior", type=float, metavar="MM")
    p.add_argument("--series", metavar="UID", help="DICOM series to read from a folder")
    p.add_argument(
        "--hu-offset",
        type=float,
        metavar="HU",
        help="added to the stored values to get HU, e.g. -1024 for data stored as HU + 1024 "
        "without a rescale (default: recognised from the data; docs/reading.md)",
    )
    p.add_argument(
        "--workers",
        type=at_least(1),
        default=1,
        metavar="N",
        help="scans processed at the same time (processes; default 1)",
    )
    p.add_argument("--force", action="store_true", help="redo scans already done")
    p.set_defaults(func=run)


def _params_from_args(args: argparse.Namespace):
    from napari_vertebra.core.params import PreprocessParams

    data: dict[str, Any] = {}
    if args.params:
        text = args.params
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ValueError(f"--params: {text!r} is neither a JSON object nor a file")
            text = path.read_text(encoding="utf-8")
        data = PreprocessParams.from_json(text).to_dict()
    for flag, name in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            data[name] = value
    return PreprocessParams.from_dict(data)


def scan_name(path: Path) -> str:
    """Output folder name of a scan: the file name without its volume suffix."""
    from napari_vertebra.core.io import CT_SUFFIXES

    name = path.name
    for suffix in sorted(CT_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def output_name(path: Path) -> str:
    """Output folder name of a scan: ``<scan name>-<8 hex digits>``.

    The digits are the start of the SHA-1 of the scan's absolute path (symbolic links
    resolved), so two scans with the same name in different folders (``a/ct.nii.gz``,
    ``b/ct.nii.gz``) or with different suffixes get different folders, and a scan gets the
    same folder on every run whatever the order of the command line.
    """
    digest = hashlib.sha1(str(Path(path).resolve()).encode("utf-8")).hexdigest()[:8]
    return f"{scan_name(path)}-{digest}"


def input_identity(
    path: Path, series: str | None = None, hu_offset: float | None = None
) -> dict[str, Any]:
    """What identifies the input a result came from: absolute path, size, mtime, and
    how it was read (DICOM series, HU offset).

    For a DICOM folder: the number of files, their total size and the latest
    modification time. Raises OSError when the path cannot be read.
    """
    p = Path(path).resolve()
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file()]
        stats = [f.stat() for f in files]
        return {
            "path": str(p),
            "files": len(files),
            "size": sum(st.st_size for st in stats),
            "mtime_ns": max((st.st_mtime_ns for st in stats), default=0),
            "series": series,
            "hu_offset": hu_offset,
        }
    st = p.stat()
    return {
        "path": str(p),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "series": series,
        "hu_offset": hu_offset,
    }


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Scans named by the command line: files, DICOM folders, folders of scans.

    A folder holding files with a volume suffix is a folder of scans (those files and its
    sub-folders); any other folder is read as one DICOM series. Missing paths and files
    with another suffix are kept so that they are reported as failures.
    """
    from napari_vertebra.core.io import CT_SUFFIXES

    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            children = sorted(p.iterdir())
            scans = [c for c in children if c.is_file() and c.name.lower().endswith(CT_SUFFIXES)]
            if scans:
                out.extend(scans)
                out.extend(c for c in children if c.is_dir())
            else:
                out.append(p)
        else:
            out.append(p)
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def is_done(out_dir: Path, params_dict: dict[str, Any], identity: dict[str, Any]) -> bool:
    """True when ``out_dir`` holds a complete result of the same input and parameters.

    ``identity`` is :func:`input_identity` of the input: a report made from another file
    (same name elsewhere, or the file changed since) is not a finished result.
    """
    report = out_dir / "report.json"
    if not report.is_file():
        return False
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    if not isinstance(data, dict):
        return False
    return (
        data.get("params") == params_dict
        and data.get("source") == identity
        and all((out_dir / f).is_file() for f in OUTPUT_FILES)
    )


def preprocess_one(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    params_dict: dict[str, Any],
    force: bool = False,
    series: str | None = None,
    hu_offset: float | None = None,
) -> dict[str, Any]:
    """Preprocess one scan into ``out_dir``; never raises for a bad scan.

    Returns {"path", "out", "status": "done" | "skipped" | "failed", "message",
    "warnings" (list of str: this run's, [] when skipped; the report keeps them),
    "seconds"}.
    """
    t0 = time.perf_counter()
    path = Path(path)
    out_dir = Path(out_dir)
    result: dict[str, Any] = {
        "path": str(path),
        "out": str(out_dir),
        "status": "failed",
        "message": "",
        "warnings": [],
    }
    try:
        try:
            identity = input_identity(path, series, hu_offset)
        except OSError:
            identity = None  # reading the scan below says what is wrong with it
        if identity is not None and not force and is_done(out_dir, params_dict, identity):
            result.update(status="skipped", message="already done")
            return result
        result["warnings"] = _process(path, out_dir, params_dict, series, identity, hu_offset)
        result["status"] = "done"
    except (ValueError, OSError, RuntimeError, MemoryError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        prefix = f"{path}: "
        result["message"] = msg[len(prefix) :] if msg.startswith(prefix) else msg
    finally:
        result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _process(
    path: Path,
    out_dir: Path,
    params_dict: dict[str, Any],
    series: str | None,
    identity: dict[str, Any] | None,
    hu_offset: float | None = None,
) -> list[str]:
    """Run the pipeline on one scan and write its outputs; returns its warnings."""
    from napari_vertebra.annotation._atomic import atomic_write_text
    from napari_vertebra.core import PreprocessParams, read_ct, run_pipeline

    params = PreprocessParams.from_dict(params_dict)
    t = time.perf_counter()
    ct = read_ct(path, series=series, hu_offset=hu_offset)
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    res = run_pipeline(ct, params)
    t_total = time.perf_counter() - t
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").unlink(missing_ok=True)  # not done until rewritten
    hu_scale = _write_outputs(out_dir, res, params.hu_max)
    report = {
        "input": str(path.resolve()),
        "source": identity if identity is not None else input_identity(path, series, hu_offset),
        "series": series,
        **_report(ct, res, hu_scale),
        "timings_s": {"read": round(t_read, 3), "pipeline": round(t_total, 3)}
        | {k: round(v, 3) for k, v in res.timings.items()},
        "params": params_dict,
    }
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, default=_json_scalar))
    return list(res.warnings)


def _write_outputs(out_dir: Path, res: Any, hu_max: float) -> float:
    """mip.png, mip.npy, canal_centres.csv and crop_box.json of a pipeline result;
    returns the PNG's stored value per HU."""
    import io

    import numpy as np

    from napari_vertebra.annotation._atomic import atomic_write_bytes, atomic_write_text, png_bytes
    from napari_vertebra.annotation.image_files import HU_SCALE

    # the COCO images' scale (40 per HU), so predict / annotation tools read it back as HU;
    # a window reaching past 65535 / 40 = 1638 HU gets a smaller scale, kept in the report
    hu_scale = min(HU_SCALE, 65535.0 / hu_max)
    png = np.clip(np.rint(res.mip * hu_scale), 0, 65535).astype(np.uint16)
    atomic_write_bytes(out_dir / "mip.png", png_bytes(png))
    npy = io.BytesIO()
    np.save(npy, res.mip.astype(np.float32))
    atomic_write_bytes(out_dir / "mip.npy", npy.getvalue())
    lines = ["z,y,x,found"] + [
        f"{z:.0f},{y:.2f},{x:.2f},{int(f)}"
        for (z, y, x), f in zip(res.canal_centres, res.canal_found, strict=True)
    ]
    atomic_write_text(out_dir / "canal_centres.csv", "\n".join(lines) + "\n")
    crop = {
        "crop_box": [list(map(int, b)) for b in res.crop_box],
        "axes": "z, y, x voxels of the resampled grid, half-open",
        "resampled_shape": list(res.resampled.shape),
    }
    atomic_write_text(out_dir / "crop_box.json", json.dumps(crop, indent=2))
    return hu_scale


def _report(ct: Any, res: Any, hu_scale: float) -> dict[str, Any]:
    """The geometry, canal and decisions of a pipeline result, for report.json."""
    from napari_vertebra import __version__

    return {
        "version": __version__,
        "input_shape": list(ct.shape),
        "input_spacing": list(ct.spacing),
        "resampled_shape": list(res.resampled.shape),
        "resampled_spacing": list(res.resampled.spacing),
        "resampled_origin_lps": list(res.resampled.origin),
        "resampled_direction": res.resampled.direction.ravel().tolist(),
        "crop_box": [list(map(int, b)) for b in res.crop_box],
        "cropped_origin_lps": list(res.cropped.origin),
        "mip_shape": list(res.mip.shape),
        "mip_orientation": "row 0 superior, column 0 anterior; max over x (left-right)",
        "mip_png_scale": f"uint16 = round(HU * {hu_scale:g}), clipped",
        "mip_png_hu_scale": hu_scale,
        "canal_found_fraction": round(res.found_fraction, 4),
        "canal_found_slices": int(res.canal_found.sum()),
        "warnings": list(res.warnings),
        "decisions": res.decisions,
    }


def _json_scalar(value: Any) -> Any:
    """numpy scalars and arrays as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def discard_unfinished(out_dir: str | os.PathLike) -> None:
    """Remove what a stopped scan left in ``out_dir``: when its ``report.json`` is missing
    (a scan is done when its report is written, last), the output files and their
    temporary copies, then the folder if that empties it. A folder with a report (a
    finished result, also one of other parameters that the scan had not reached yet)
    is left alone."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir() or (out_dir / "report.json").is_file():
        return
    for name in OUTPUT_FILES:
        (out_dir / name).unlink(missing_ok=True)
        for tmp in out_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    try:
        out_dir.rmdir()
    except OSError:
        pass  # other files of the user's: kept


def _ignore_sigint() -> None:
    """Worker processes ignore Ctrl+C: the main process stops them and cleans up."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_pool(jobs: list[tuple[Path, Path]], workers: int, call: tuple, done) -> None:
    """:func:`preprocess_one` of ``jobs`` in ``workers`` processes, ``done(result)`` for
    each as it finishes. Interrupted (Ctrl+C), the workers are ended at once."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")  # SimpleITK's threads and fork do not mix
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_ignore_sigint)
    try:
        futs = {pool.submit(preprocess_one, p, out, *call): (p, out) for p, out in jobs}
        for fut in as_completed(futs):
            try:
                done(fut.result())
            except Exception as e:  # a crashed worker: report and go on
                p, out = futs[fut]
                done({"path": str(p), "out": str(out), "status": "failed", "message": repr(e)})
    except BaseException:
        _end_workers(pool)
        raise
    pool.shutdown()


def _end_workers(pool: Any) -> None:
    """End the processes of a ProcessPoolExecutor now (its running scans are lost) and
    wait until they are gone, so that none writes after the clean-up."""
    # the executor has no public way to end its workers before Python 3.14
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for proc in procs:
        proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def run(args: argparse.Namespace) -> int:
    """Run the ``preprocess`` command; returns 1 if any scan failed.

    Ctrl+C stops it at once: finished scans stay, the scans in progress leave nothing
    (:func:`discard_unfinished`), and KeyboardInterrupt goes on to the command line.
    """
    from tqdm import tqdm

    params = _params_from_args(args)
    params_dict = params.to_dict()
    scans = expand_inputs(args.inputs)
    out_root = Path(args.output)
    out_root.mkdir(parents=True, exist_ok=True)
    jobs = [(p, out_root / output_name(p)) for p in scans]
    call = (params_dict, args.force, args.series, args.hu_offset)

    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), unit="scan", desc="preprocess", file=sys.stderr)

    def done(r: dict[str, Any]) -> None:
        results.append(r)
        if r["status"] == "failed":
            tqdm.write(f"FAILED {r['path']}: {r['message']}", file=sys.stderr)
        for w in r.get("warnings", []):
            tqdm.write(f"WARNING {r['path']}: {w}", file=sys.stderr)
        bar.update(1)

    try:
        if args.workers == 1 or len(jobs) <= 1:
            for p, out in jobs:
                done(preprocess_one(p, out, *call))
        else:
            _run_pool(jobs, args.workers, call, done)
    except KeyboardInterrupt:
        bar.close()
        finished = {r.get("out") for r in results}
        for _, out in jobs:
            if str(out) not in finished:
                discard_unfinished(out)
        print(f"interrupted: {_summary(results, len(jobs), out_root)}; the scans in progress "
              "left nothing: the same command does the rest", file=sys.stderr)  # fmt: skip
        raise
    bar.close()
    print(_summary(results, len(jobs), out_root))
    return 1 if any(r["status"] == "failed" for r in results) else 0


def _summary(results: list[dict[str, Any]], n_jobs: int, out_root: Path) -> str:
    """ "preprocessed N, skipped S (already done), failed F of M scan(s) into OUT"."""
    n = {s: sum(r["status"] == s for r in results) for s in ("done", "skipped", "failed")}
    n_warned = sum(bool(r.get("warnings")) for r in results)
    warned = f"; {n_warned} with warnings (see their report.json)" if n_warned else ""
    return (
        f"preprocessed {n['done']}, skipped {n['skipped']} (already done), "
        f"failed {n['failed']} of {n_jobs} scan(s) into {out_root}{warned}"
    )
