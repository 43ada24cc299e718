"""Is the level confidence honest? The cut-off of a *certain* naming, and its checks.

A naming whose level confidence (:mod:`napari_vertebra.model.levels`) reaches
:data:`CERTAIN` is called certain. :func:`level_calibration` measures on annotated images
how often such namings are right (``evaluate`` and validation report it),
:func:`certainty_check` says it in a sentence (with a warning when they are right less
often than they claim), and :func:`fit_evidence_weight` chooses the decoder's evidence
weight that makes the confidence honest on held-out views. docs/levels.md explains them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vertebra.core.labels import ClassSet

from .levels import decode_levels

__all__ = ["CERTAIN", "certainty_check", "fit_evidence_weight", "level_calibration"]

#: The level confidence at which a naming is called *certain* (evaluate and the
#: benchmark report how often such namings are right; docs/levels.md).
CERTAIN = 0.9


def certainty_check(
    share: float, certain_id_rate: float | None, n_images: int | float | None = None
) -> tuple[str, str]:
    """(sentence, warning) on a level confidence checked against the truth on the val
    images (``n_images`` of them, said when given: a check on 4 images is rough):
    ``share`` called certain (>= :data:`CERTAIN`), identified at ``certain_id_rate``;
    the warning (else "") when that is below :data:`CERTAIN`."""
    images = "the val images" if n_images is None else f"the {int(n_images)} val images"
    note = f"level confidence on {images}: {share:.0%} called certain (>= {CERTAIN:g})"
    if certain_id_rate is None:
        return note, ""
    note += f", identified at {certain_id_rate:.2f}"
    if certain_id_rate >= CERTAIN:
        return note, ""
    return note, (
        f"the level confidence overstates certainty ({images} it called certain "
        f"were identified at {certain_id_rate:.2f}): check it on annotated scans of your "
        "own (evaluate) before trusting a high one"
    )


def level_calibration(
    rates: dict[str, float | None], confidence: dict[str, float], cutoff: float = CERTAIN
) -> dict[str, Any]:
    """Whether a level confidence is honest: of the images that show vertebrae
    (``rates``: identification rate per image, None for none), the share called certain
    (``confidence`` >= ``cutoff``; an image without a confidence, e.g. with no
    prediction, is not certain) and the mean identification rate of those and of the rest.
    """
    shown = {k: r for k, r in rates.items() if r is not None}
    sure = [r for k, r in shown.items() if confidence.get(k, 0.0) >= cutoff]
    rest = [r for k, r in shown.items() if confidence.get(k, 0.0) < cutoff]
    return {
        "level_certain_cutoff": float(cutoff),
        "level_certain_share": len(sure) / len(shown) if shown else None,
        "level_certain_id_rate": float(np.mean(sure)) if sure else None,
        "level_uncertain_id_rate": float(np.mean(rest)) if rest else None,
    }


def fit_evidence_weight(
    samples: list[dict],
    class_set: str | ClassSet | None = None,
    weights: tuple[float, ...] = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0),
    **decode_kw,
) -> tuple[float, dict[float, float]]:
    """The ``evidence_weight`` that makes the level confidence honest on held-out views.

    Detections of one image are not independent (one appearance, one bias), so their
    summed evidence overstates certainty; like temperature scaling, the weight is
    chosen to maximise the mean log posterior of the true naming. ``samples``: one dict
    per validation image with ``class_probs``, ``truth`` (level names, input order) and
    optionally ``centroids_mm``, ``heights_mm``, ``rib_bearing``. Returns (best weight,
    {weight: mean log posterior of the truth}).
    """
    if not samples:
        raise ValueError("fit_evidence_weight needs at least one validation image")
    table: dict[float, float] = {}
    for w in weights:
        total = 0.0
        for smp in samples:
            d = decode_levels(
                smp["class_probs"],
                class_set,
                smp.get("centroids_mm"),
                smp.get("heights_mm"),
                smp.get("rib_bearing"),
                evidence_weight=w,
                **decode_kw,
            )
            total += np.log(max(d.probability_of(smp["truth"]), 1e-6))
        table[float(w)] = total / len(samples)
    best = max(table, key=lambda k: table[k])
    return best, table
