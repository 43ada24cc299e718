"""COCO run-length encoded masks (RLE): decoding, as COCO files from other tools hold them.

An RLE mask is ``{"size": [height, width], "counts": ...}``: alternating runs of 0 and 1
pixels in column-major order, starting with 0; ``counts`` is a list of run lengths or
COCO's compressed string. Pure numpy (no pycocotools).
"""

from __future__ import annotations

import numpy as np

from .reading import is_int

__all__ = ["rle_decode"]


def _rle_counts_from_string(text: str) -> list[int]:
    """Counts of COCO's compressed RLE string (5 bits per character, offset 48, counts
    after the second stored as differences to the count two before)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError("truncated RLE string")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError("invalid character in RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """Boolean (height, width) mask of a COCO RLE dict ``{"size": [h, w], "counts": ...}``
    (counts a list, or the compressed string); ValueError when malformed."""
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
        raise ValueError("RLE needs 'size': [height, width]")
    if isinstance(counts, str):
        counts = _rle_counts_from_string(counts)
    elif isinstance(counts, bytes):
        counts = _rle_counts_from_string(counts.decode("ascii"))
    if not isinstance(counts, list) or not all(is_int(v) and v >= 0 for v in counts):
        raise ValueError("RLE 'counts' must be a string or a list of non-negative integers")
    h, w = size
    if sum(counts) != h * w:
        raise ValueError(f"RLE counts add up to {sum(counts)}, not {h}x{w}")
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()  # column-major
