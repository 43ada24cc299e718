"""Level tools of the annotation session (Qt-free): :func:`shift_levels` (a sequence
labelled off by one) and :func:`next_missing` (where the class picker goes next)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from .types import VertebraAnnotation

__all__ = ["next_missing", "shift_levels"]

#: Paper class ids run T1 (1) .. L5 (17), superior to inferior.
_FIRST, _LAST = 1, 17


def shift_levels(annotations: Sequence[VertebraAnnotation], step: int) -> list[VertebraAnnotation]:
    """Every annotation moved ``step`` levels (-1: one up towards T1, +1: one down).

    For a sequence labelled off by one. Raises ValueError (nothing changed) when a label
    would leave T1..L5 or is not one of T1..L5.
    """
    step = int(step)
    out = []
    for a in annotations:
        if not _FIRST <= a.class_id <= _LAST:
            raise ValueError(f"{a.name} is not one of T1..L5: shift levels works on T1..L5 only")
        new = a.class_id + step
        if not _FIRST <= new <= _LAST:
            way = "up" if step < 0 else "down"
            raise ValueError(
                f"shifting {way} would move {a.name} past {'T1' if step < 0 else 'L5'}; "
                "nothing was changed"
            )
        out.append(replace(a, class_id=new, polygons=[p.copy() for p in a.polygons]))
    return out


def next_missing(
    present: Iterable[int], start: int, step: int = 1, order: Sequence[int] | None = None
) -> int | None:
    """The first class id from ``start`` on (walking ``step``: +1 down, -1 up the spine)
    that is not in ``present``; if none that way, the nearest missing one the other way
    from ``start``; None when every level is present.

    ``order``: the class ids superior to inferior (default T1..L5; the extended class
    set's is ``EXTENDED.ids_in_order()``, C7 first). A ``start`` outside it is taken as
    the nearest end by id. E.g. with T12..L5 present and the picker at L1 going down: T11.
    """
    seq = [int(c) for c in (order if order is not None else range(_FIRST, _LAST + 1))]
    have = {int(c) for c in present}
    step = 1 if step >= 0 else -1
    start = int(start)
    if start in seq:
        i0 = seq.index(start)
    else:
        i0 = 0 if start < min(seq) else len(seq) - 1
    for direction in (step, -step):
        i = i0
        while 0 <= i < len(seq):
            if seq[i] not in have:
                return seq[i]
            i += direction
    return None
