"""The adult spine the level decoder assumes: its variants and the typical level sizes.

A spine variant is its thoracic (11, 12, 13) and lumbar (5, 6) vertebra count
(:func:`variant_levels`, :data:`VARIANT_PRIORS`); :data:`BODY_HEIGHT_MM` and
:data:`DISC_HEIGHT_MM` give each level's typical size, :func:`expected_spacing_mm` the
centroid distance of neighbours. Used by :mod:`napari_vertebra.model.levels` (the size
prior) and by the synthetic spines of :mod:`napari_vertebra.synth`; sources in
docs/levels.md.
"""

from __future__ import annotations

__all__ = [
    "BODY_HEIGHT_MM",
    "DISC_HEIGHT_MM",
    "LEVEL_RANK",
    "SACRUM_SPACING_MM",
    "VARIANT_PRIORS",
    "expected_spacing_mm",
    "variant_levels",
]

#: Typical adult vertebral body height (mm, mid-sagittal, rounded), superior to inferior.
#: Approximate, after Panjabi et al. (Spine 1991, thoracic; Spine 1992, lumbar): about
#: 15 mm at T1 rising to 23 mm at T12 and 27 mm at L4/L5; C7 a little below T1; T13 and L6
#: taken as their neighbours. S1 is the whole sacrum's outline: no height prior (None).
BODY_HEIGHT_MM: dict[str, float | None] = {
    "C7": 14.0, "T1": 15.0, "T2": 16.0, "T3": 16.5, "T4": 17.0, "T5": 17.5, "T6": 18.0,
    "T7": 18.5, "T8": 19.0, "T9": 20.0, "T10": 21.0, "T11": 22.0, "T12": 23.0, "T13": 24.0,
    "L1": 25.0, "L2": 26.0, "L3": 26.5, "L4": 27.0, "L5": 27.0, "L6": 27.0, "S1": None,
}  # fmt: skip
#: Typical height (mm) of the disc below each level; approximate: thoracic discs about
#: 4..6 mm, the thoracolumbar one about 7 mm, lumbar discs 9..12 mm.
DISC_HEIGHT_MM: dict[str, float] = {
    "C7": 4.0, "T1": 4.0, "T2": 4.0, "T3": 4.0, "T4": 4.0, "T5": 4.5, "T6": 5.0, "T7": 5.0,
    "T8": 5.0, "T9": 5.0, "T10": 5.5, "T11": 6.0, "T12": 7.0, "T13": 7.0,
    "L1": 9.0, "L2": 10.0, "L3": 11.0, "L4": 12.0, "L5": 11.0, "L6": 11.0,
}  # fmt: skip
#: Centroid distance (mm) from the lowest lumbar vertebra to the sacrum outline's centroid.
SACRUM_SPACING_MM = 55.0

#: Prior of each spine variant: (thoracic count, lumbar count) -> probability. Thoracic
#: and lumbar counts taken as independent: 11 thoracic 5 %, 13 thoracic 1 %, 6 lumbar
#: 5 % (approximate; sources in docs/levels.md).
_P_THORACIC = {11: 0.05, 12: 0.94, 13: 0.01}
_P_LUMBAR = {5: 0.95, 6: 0.05}
VARIANT_PRIORS: dict[tuple[int, int], float] = {
    (t, lum): pt * pl for t, pt in _P_THORACIC.items() for lum, pl in _P_LUMBAR.items()
}

#: Anatomical rank of every level (C7 first) across all variants, for ordering names.
LEVEL_RANK: dict[str, int] = {
    lv: i for i, lv in enumerate(("C7", *[f"T{i}" for i in range(1, 14)], "L1", "L2", "L3",
                                   "L4", "L5", "L6", "S1"))
}  # fmt: skip


def variant_levels(thoracic: int = 12, lumbar: int = 5) -> tuple[str, ...]:
    """All levels C7..S1 of a spine with ``thoracic`` (11..13) and ``lumbar`` (5..6) vertebrae.

    11 thoracic means T12 is absent (T11 is followed by L1), as VerSe labels it.
    """
    if thoracic not in (11, 12, 13) or lumbar not in (5, 6):
        raise ValueError(f"no spine variant with {thoracic} thoracic and {lumbar} lumbar")
    t = [f"T{i}" for i in range(1, thoracic + 1)]
    lum = [f"L{i}" for i in range(1, lumbar + 1)]
    return ("C7", *t, *lum, "S1")


def expected_spacing_mm(upper: str, lower: str) -> float:
    """Typical centroid distance (mm) of two adjacent levels (``lower`` just below ``upper``)."""
    if lower == "S1":
        return SACRUM_SPACING_MM
    disc = DISC_HEIGHT_MM["T12"] if lower == "L1" else DISC_HEIGHT_MM[upper]
    return (BODY_HEIGHT_MM[upper] + BODY_HEIGHT_MM[lower]) / 2 + disc
