"""Constants and helpers shared by the tests of napari_vertebra.core."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

#: TotalSegmentator ids of the lumbar sample.
LUMBAR_VERTEBRAE = {27: "L5", 28: "L4", 29: "L3", 30: "L2", 31: "L1", 32: "T12", 33: "T11"}
HIPS = (77, 78)
CORD = 79


def load_benchmark_module():
    """benchmarks/preprocess.py as a module (for its synthetic CT)."""
    spec = importlib.util.spec_from_file_location(
        "bench_preprocess", ROOT / "benchmarks" / "preprocess.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0
