"""Work on a volume in chunks of axial slices, on all cores."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["by_slices"]


def by_slices(fn: Callable[[int, int], None], nz: int, chunk: int = 8) -> None:
    """Call ``fn(z0, z1)`` over chunks of axial slices on all cores.

    Per chunk the temporaries stay in cache (about 5x faster than whole-volume
    temporaries on a 600 x 358 x 358 grid); numpy releases the GIL, so the chunks run in
    parallel like SimpleITK's filters.
    """
    starts = range(0, nz, chunk)
    n_jobs = min(os.cpu_count() or 1, len(starts))
    if n_jobs <= 1:
        for z0 in starts:
            fn(z0, min(nz, z0 + chunk))
        return
    with ThreadPoolExecutor(n_jobs) as pool:
        list(pool.map(lambda z0: fn(z0, min(nz, z0 + chunk)), starts))
