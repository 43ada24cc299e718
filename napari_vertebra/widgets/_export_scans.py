"""The "split by scan" box of 'Export dataset' and the warnings about a split's size.

:class:`ScanSplits` shows one picker per annotated scan of the project: ``auto`` (the
seeded split by fractions puts it, and the label says where) or ``train`` / ``val`` /
``test``. :func:`split_warnings` reads a built dataset's summary: a split asked for that
came out empty or tiny, a train split smaller than another, the biggest scan outside
train.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from magicgui.widgets import ComboBox, Container, Label

from napari_vertebra.annotation.dataset import SPLITS, assign_splits

__all__ = ["AUTO", "TINY_SPLIT_IMAGES", "ScanSplits", "split_warnings"]

#: The picker value that leaves a scan to the split by fractions.
AUTO = "auto"
#: A split asked for with fewer images than this is too small to learn from or measure on.
TINY_SPLIT_IMAGES = 10


class ScanSplits:
    """One split picker per scan (``pickers``: {scan: ComboBox}) in ``container``, with
    the scan's MIPs and vertebrae (``sizes``: {scan: vertebrae}) in its label;
    ``on_change()`` is called when a picker changes."""

    def __init__(self, on_change: Any = None) -> None:
        self.on_change = on_change
        self.container = Container(labels=True)
        self.container.margins = (0, 0, 0, 0)
        self.empty = Label(value="no annotated scan in the project yet")
        self.pickers: dict[str, ComboBox] = {}
        self.sizes: dict[str, int] = {}
        self._mips: dict[str, int] = {}

    def set_scans(self, images: Sequence[Any], fractions: Sequence[float], seed: int) -> None:
        """One picker per scan of ``images`` (AnnotatedImage: ``scan``, ``annotations``),
        keeping the choices made for scans seen before."""
        chosen = self.fixed()
        self.sizes, self._mips = {}, {}
        for im in images:
            scan = im.scan or "scan"
            self.sizes[scan] = self.sizes.get(scan, 0) + len(im.annotations)
            self._mips[scan] = self._mips.get(scan, 0) + 1
        if sorted(self.sizes) == sorted(self.pickers) and self.pickers:
            self.show_auto(fractions, seed)  # the same scans: the pickers stay
            return
        self.container.clear()
        self.pickers = {}
        for scan in sorted(self.sizes):
            picker = ComboBox(value=chosen.get(scan, AUTO), choices=[AUTO, *SPLITS])
            picker.tooltip = f"The split of every image of {scan}; auto: by the fractions."
            if self.on_change is not None:
                picker.changed.connect(lambda *_: self.on_change())
            self.pickers[scan] = picker
            self.container.append(picker)
        if not self.pickers:
            self.container.append(self.empty)
        self.show_auto(fractions, seed)

    def fixed(self) -> dict[str, str]:
        """{scan: split} of the scans not left to ``auto``."""
        return {s: str(p.value) for s, p in self.pickers.items() if p.value != AUTO}

    def show_auto(self, fractions: Sequence[float], seed: int) -> None:
        """Write in each label where its scan goes (``auto``: by ``fractions`` and ``seed``,
        among the project's scans)."""
        try:
            split = assign_splits(list(self.pickers), fractions, seed, self.fixed())
        except ValueError:  # e.g. every fraction 0: the build says why
            split = {}
        where = {s: name for name, scans in split.items() for s in scans}
        for scan, picker in self.pickers.items():
            goes = f" → {where[scan]}" if picker.value == AUTO and scan in where else ""
            n, v = self._mips[scan], self.sizes[scan]
            picker.label = f"{scan} ({n} MIP{'s' if n != 1 else ''}, {v} vertebrae){goes}"


def split_warnings(
    summary: dict, fractions: dict[str, float], sizes: dict[str, int] | None = None
) -> list[str]:
    """Plain words on the size of the splits of a built dataset (``summary``: its
    dataset.json; ``sizes``: vertebrae per scan): a split asked for with fewer than
    :data:`TINY_SPLIT_IMAGES` images, train with fewer vertebrae than another split, the
    biggest scan outside train. [] when none applies."""
    splits = summary.get("splits", {})
    asked = [n for n in SPLITS if fractions.get(n, 0) > 0]
    out = []
    for name in asked:
        n = splits.get(name, {}).get("images", 0)
        if 0 < n < TINY_SPLIT_IMAGES:
            use = "learn from" if name == "train" else "measure on"
            out.append(
                f"the {name} split holds only {n} image{'s' if n != 1 else ''}: too few to {use}"
            )
    train = splits.get("train", {}).get("annotations", 0)
    if "train" in asked:
        bigger = [
            f"{n} ({splits[n].get('annotations', 0)})"
            for n in SPLITS[1:]
            if splits.get(n, {}).get("annotations", 0) > train
        ]
        if bigger:
            out.append(f"train holds fewer vertebrae ({train}) than {' and '.join(bigger)}")
        where = {s: n for n in SPLITS for s in splits.get(n, {}).get("scans", [])}
        known = {s: v for s, v in (sizes or {}).items() if s in where}
        if known:
            biggest = max(known, key=lambda s: (known[s], s))
            if where[biggest] != "train":
                out.append(
                    f"the biggest scan, {biggest} ({known[biggest]} vertebrae), went to "
                    f"{where[biggest]}"
                )
    return out
