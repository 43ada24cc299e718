"""Level decoding: name the detected vertebrae of one image jointly, with a level confidence.

Pure numpy (no torch). A detector scores each vertebra on its own; on a partial view
without a landmark the whole sequence is easily off by one level. :func:`decode_levels`
assigns the levels of a class set to N detections ordered top to bottom, jointly:

- the levels are consecutive from top to bottom in one *spine variant*: the usual 12
  thoracic + 5 lumbar, or 11 / 13 thoracic (T12 absent / T13 present) and 5 / 6 lumbar
  (L6), each with a prior (:data:`~napari_vertebra.model.spine.VARIANT_PRIORS`, from the
  frequencies in ``docs/levels.md``). An extra level that is not a class of the set but
  lies between two of its levels (T13 in the paper set, between T12 and L1) is a vertebra the
  detector sees and the set cannot name: it is left unnamed (``""``), its evidence that
  of the neighbour it looks more like, so the levels above it are not named one off.
  One below the set's last level (L6 in the paper set) is an end detection left
  unnamed (``p_outside``). One vertebra missed by the detector may be skipped
  (``p_skip``), the spacing tells when;
- the evidence is the class probabilities (raised to ``evidence_weight``), optionally
  whether each vertebra bears a rib, and a prior on vertebral size in mm (the typical
  sizes of :mod:`napari_vertebra.model.spine`): the centroid spacing of neighbours
  and, if given, the body heights, compared with the level's typical adult size times a
  patient scale (log-normal, sd 0.10) that is marginalised over a grid.

Every hypothesis (variant, level of the top detection) gets a posterior; hypotheses that
name the detections alike are merged. The best naming's posterior is the *level
confidence*; the same naming shifted up or down by one or two levels gets its own
posterior (``shifts``), e.g. ``"T9..L2, level confidence 0.72; one level up: 0.21"``.
Normalisation is over every hypothesis considered (all starts of all variants), which
includes the +-1 and +-2 shifts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from napari_vertebra.core.labels import LEVEL_IDS, ClassSet, get_class_set

from .spine import BODY_HEIGHT_MM, LEVEL_RANK, VARIANT_PRIORS, expected_spacing_mm, variant_levels

__all__ = ["LevelDecoding", "class_frequencies", "decode_levels"]

#: Log-normal sd of the patient scale, of one spacing and of one body height.
SCALE_SD = 0.10
SPACING_SD = 0.12
HEIGHT_SD = 0.12
_SCALE_GRID = np.exp(np.linspace(-3 * SCALE_SD, 3 * SCALE_SD, 13))
#: Below this probability that the named detections are vertebrae, the summary says so.
VERTEBRAE_SURE = 0.9
_SHIFT_WORDS = {-2: "two levels up", -1: "one level up", 1: "one level down", 2: "two levels down"}


@dataclass(frozen=True)
class LevelDecoding:
    """The decoded levels of one image's detections.

    ``levels`` and ``class_ids`` are per detection in the input order; ``confidence`` is
    the probability that this naming is right: ``naming`` (its posterior among the
    namings of the detections as vertebrae) times ``vertebrae`` (the probability that
    the named detections are vertebrae at all; 1 when not given). ``shifts`` maps -2,
    -1, +1, +2 (negative = the whole naming one or two levels up, i.e. more superior) to
    the probability of that naming likewise (0 where it does not fit the spine);
    ``variant`` is (thoracic, lumbar) counts of the most probable spine variant behind
    the naming; ``alternatives`` the next namings with their posteriors, best first;
    ``namings`` every naming considered (input order) with its posterior.
    """

    levels: tuple[str, ...]
    class_ids: np.ndarray
    confidence: float
    shifts: dict[int, float] = field(default_factory=dict)
    variant: tuple[int, int] = (12, 5)
    alternatives: tuple[tuple[tuple[str, ...], float], ...] = ()
    namings: dict[tuple[str, ...], float] = field(default_factory=dict, repr=False)
    naming: float | None = None
    vertebrae: float = 1.0

    def probability_of(self, levels: tuple[str, ...] | list[str]) -> float:
        """Posterior of a naming (level names in the input order); 0 if never considered."""
        return float(self.namings.get(tuple(levels), 0.0))

    def as_dict(self) -> dict:
        """JSON-ready fields for a predictions file: levels, level_confidence, shifts, ..."""
        return {
            "levels": list(self.levels),
            "level_confidence": round(self.confidence, 4),
            "naming_confidence": round(self.confidence if self.naming is None else self.naming, 4),
            "vertebra_confidence": round(self.vertebrae, 4),
            "level_shifts": {f"{k:+d}": round(v, 4) for k, v in sorted(self.shifts.items())},
            "spine_variant": {"thoracic": self.variant[0], "lumbar": self.variant[1]},
            "level_summary": self.summary(),
        }

    def summary(self, min_share: float = 0.05) -> str:
        """``"T9..L2, level confidence 0.72; one level up: 0.21"`` (shifts >= min_share)."""
        named = [lv for lv in self.levels if lv]
        if not named:
            return "no vertebrae"
        ranked = sorted(named, key=lambda lv: LEVEL_RANK.get(lv, 0))
        first, last = ranked[0], ranked[-1]
        span = first if first == last else f"{first}..{last}"
        text = f"{span}, level confidence {self.confidence:.2f}"
        if self.vertebrae < VERTEBRAE_SURE:
            text += f" (they look like vertebrae at only {self.vertebrae:.2f})"
        extra = sorted(self.shifts, key=lambda k: -self.shifts[k])
        extra = [k for k in extra if self.shifts[k] >= min_share][:2]
        for k in extra:
            text += f"; {_SHIFT_WORDS[k]}: {self.shifts[k]:.2f}"
        if self.variant != (12, 5):
            text += f" ({self.variant[0]} thoracic, {self.variant[1]} lumbar)"
        return text


def _logsumexp(a: np.ndarray, axis: int | None = None) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def _norm_logpdf(x: np.ndarray, sd: float) -> np.ndarray:
    return -0.5 * (x / sd) ** 2 - np.log(sd * np.sqrt(2 * np.pi))


def class_frequencies(
    counts: np.ndarray | list[int], pseudo_count: float = 1.0, max_boost: float = 10.0
) -> np.ndarray:
    """Training share of each class, for :func:`decode_levels` ``class_frequencies``.

    ``counts``: annotated vertebrae per class (column j = class id j + 1), as the
    trainer stores them in checkpoints (``class_counts``). Smoothed with ``pseudo_count``
    per class and floored at the median share / ``max_boost``, so that a class seen a
    few times (or never) in training is not promoted more than ``max_boost`` times over
    a typical one: its probabilities are the least trustworthy.
    """
    c = np.asarray(counts, dtype=float).reshape(-1)
    if c.size == 0 or not np.all(np.isfinite(c)) or (c < 0).any():
        raise ValueError("class counts must be non-negative numbers, one per class")
    if not pseudo_count > 0 or not max_boost >= 1:
        raise ValueError("pseudo_count must be positive and max_boost at least 1")
    f = (c + pseudo_count) / (c + pseudo_count).sum()
    f = np.maximum(f, np.median(f) / max_boost)
    return f / f.sum()


def decode_levels(
    class_probs: np.ndarray,
    class_set: str | ClassSet | None = None,
    centroids_mm: np.ndarray | None = None,
    heights_mm: np.ndarray | None = None,
    rib_bearing: np.ndarray | None = None,
    *,
    variant_priors: dict[tuple[int, int], float] | None = None,
    class_frequencies: np.ndarray | None = None,
    p_skip: float = 0.03,
    evidence_weight: float = 1.0,
    eps: float = 1e-4,
    p_outside: float = 0.05,
    max_outside: tuple[int, int] = (2, 1),
    vertebra_probs: np.ndarray | None = None,
) -> LevelDecoding:
    """Name N detections of one image jointly (see the module doc).

    ``class_probs``: (N, K) probabilities (or positive scores) of the class set's K
    classes, column j = class id j + 1 (the model's softmax without background); each
    row is renormalised. Detections are taken top to bottom in the given order, unless
    ``centroids_mm`` ((N, 2) row, col or (N,) rows, in mm: pixels times the MIP's
    spacing, 1 mm for ours) is given: then they are sorted by row. ``heights_mm``: (N,)
    vertebral *body* heights in mm (not the whole vertebra's extent), optional.
    ``rib_bearing``: (N,) probability that each vertebra bears a rib, optional.
    ``variant_priors`` replaces :data:`~napari_vertebra.model.spine.VARIANT_PRIORS`;
    ``p_skip`` is the probability that the detector missed one vertebra between two
    neighbours.

    ``class_frequencies``: (K,) share of each class among the training vertebrae. A
    detector's class probability already holds the training rarity of T13 and L6; the
    variant prior holds it too, so pass the frequencies to divide it out (likelihood =
    probability / frequency). Without them (uniform), a lone T13 at the edge of a view
    needs a probability about 90 times that of L1 to beat the 1 % prior.

    ``p_outside``: the probability that a detection at either end of the image is a
    vertebra *outside* the class set (C6 above the extended set's C7, C7 above the paper
    set's T1, the sacrum below its L5); its class evidence is that of the set's end level
    it resembles (the top or the bottom level of the variant). Up to ``max_outside`` =
    (top, bottom) such detections may be left unnamed; their level is ``""`` and their
    class id 0, and the prediction drops them. Without it, a detector that sees C5 and C6
    as "C7-like" forces every vertebra below one or two levels down.

    ``vertebra_probs``: (N,) probability that each detection is a vertebra at all (the
    detector's 1 - p(background)). The class evidence says which level a detection is
    *if* it is a vertebra; a naming of detections that are not (the aorta, the sternum,
    noise at a low threshold) must not come out certain, so the confidence is the
    naming's posterior times the product of the named detections' probabilities, each
    raised to ``evidence_weight`` (one image's detections share one bias, as for the
    class evidence): :attr:`LevelDecoding.vertebrae`.
    """
    cs = get_class_set(class_set)
    ev = _evidence(class_probs, cs, centroids_mm, heights_mm, rib_bearing, class_frequencies, eps)
    if ev is None:
        return LevelDecoding((), np.zeros(0, int), 0.0, {k: 0.0 for k in _SHIFT_WORDS})
    if not 0 <= p_skip < 1:
        raise ValueError(f"p_skip must be in [0, 1), got {p_skip}")
    if not 0 <= p_outside < 1:
        raise ValueError(f"p_outside must be in [0, 1), got {p_outside}")
    priors = VARIANT_PRIORS if variant_priors is None else variant_priors
    hyps = _hypotheses(ev, cs, priors, p_skip, evidence_weight, p_outside, max_outside)
    if not hyps:
        raise ValueError(
            f"{len(ev.order)} detections cannot be named in order with the {cs.name} class "
            f"set ({len(cs.levels)} levels); suppress duplicates first"
        )
    return _with_vertebrae(_posterior(hyps, ev.order, cs), vertebra_probs, evidence_weight)


def _with_vertebrae(
    d: LevelDecoding, vertebra_probs: np.ndarray | None, weight: float
) -> LevelDecoding:
    """``d`` with its confidence and shifts times the probability that the named
    detections are vertebrae (see :func:`decode_levels`)."""
    if vertebra_probs is None:
        return d
    v = np.asarray(vertebra_probs, float).reshape(-1)
    if v.shape != (len(d.levels),) or not np.all((v >= 0) & (v <= 1)):
        raise ValueError(f"vertebra_probs must be {len(d.levels)} probabilities in 0..1")
    named = np.array([bool(lv) for lv in d.levels])
    q = float(np.prod(np.maximum(v[named], 1e-6) ** weight))
    return replace(
        d,
        confidence=d.confidence * q,
        shifts={k: p * q for k, p in d.shifts.items()},
        naming=d.confidence,
        vertebrae=q,
    )


@dataclass(frozen=True)
class _Evidence:
    """:func:`decode_levels`' inputs checked and sorted top to bottom: ``p`` (N, K)
    renormalised class evidence, ``order`` the input index of each row, ``gaps`` (N-1,)
    centroid distances (mm) of neighbours, ``heights`` and ``ribs`` (N,) or None."""

    p: np.ndarray
    order: np.ndarray
    gaps: np.ndarray | None
    heights: np.ndarray | None
    ribs: np.ndarray | None


def _evidence(
    class_probs, cs: ClassSet, centroids_mm, heights_mm, rib_bearing, class_frequencies, eps
) -> _Evidence | None:
    """The checked evidence of :func:`decode_levels` (ValueError saying what is wrong),
    None for no detection."""
    p = np.asarray(class_probs, dtype=float)
    n_cls = len(cs.ids)
    if p.ndim != 2 or p.shape[1] != n_cls:
        raise ValueError(
            f"class_probs must be (N, {n_cls}) for the {cs.name} class set; got {p.shape}"
        )
    n = p.shape[0]
    if n == 0:
        return None
    if not np.all(np.isfinite(p)) or (p < 0).any():
        raise ValueError("class_probs must be finite and non-negative")
    p = np.clip(p, eps, None)
    if class_frequencies is not None:
        f = np.asarray(class_frequencies, dtype=float).reshape(-1)
        if f.shape != (n_cls,) or not np.all(np.isfinite(f)) or (f <= 0).any():
            raise ValueError(f"class_frequencies must be {n_cls} positive numbers")
        p = p / f[None, :]
    p /= p.sum(1, keepdims=True)
    order, cen = np.arange(n), None
    if centroids_mm is not None:
        cen = np.asarray(centroids_mm, dtype=float)
        if cen.shape[:1] != (n,) or cen.ndim > 2 or not np.all(np.isfinite(cen)):
            raise ValueError(f"centroids_mm must be (N,) or (N, 2) finite mm for N = {n}")
        cen = cen.reshape(n, -1)
        order = np.argsort(cen[:, 0], kind="stable")
        cen = cen[order]
    heights = None if heights_mm is None else np.asarray(heights_mm, float).reshape(n)[order]
    if heights is not None and not (np.all(np.isfinite(heights)) and (heights > 0).all()):
        raise ValueError("heights_mm must be positive numbers (body heights in mm)")
    ribs = None if rib_bearing is None else np.asarray(rib_bearing, float).reshape(n)[order]
    if ribs is not None and not (np.all(np.isfinite(ribs)) and ((ribs >= 0) & (ribs <= 1)).all()):
        raise ValueError("rib_bearing must be probabilities in 0..1")
    gaps = None
    if cen is not None and n > 1:
        gaps = np.linalg.norm(np.diff(cen, axis=0), axis=1)
        if (gaps <= 0).any():
            raise ValueError("two detections share a centroid; suppress duplicates first")
    return _Evidence(p[order], order, gaps, heights, ribs)


#: One hypothesis of :func:`_hypotheses`: (log score, the naming top to bottom, the
#: variant, the start along its sequence, that sequence).
_Hypothesis = tuple[float, tuple[str, ...], tuple[int, int], int, tuple[str, ...]]


def _variant_sequence(t_count: int, l_count: int, cs: ClassSet) -> tuple[str, ...] | None:
    """The levels of a spine variant that the class set's detections can take, or None
    when the set cannot name the variant. A level of the variant that the set cannot
    name but that lies between two of its levels (T13 between the paper set's T12 and
    L1) stays in the sequence: a vertebra the detector sees, left unnamed (""), instead
    of every vertebra above it named one level off."""
    full = variant_levels(t_count, l_count)
    inside = [i for i, lv in enumerate(full) if lv in cs.levels]
    if not inside:
        return None
    seq = tuple(lv for i, lv in enumerate(full) if lv in cs.levels or inside[0] < i < inside[-1])
    if (t_count == 13 and "T13" not in seq) or (l_count == 6 and "L6" not in seq):
        return None  # the set cannot name this variant's extra level (L6 below L5)
    return seq


def _hypotheses(
    ev: _Evidence,
    cs: ClassSet,
    priors: dict[tuple[int, int], float],
    p_skip: float,
    weight: float,
    p_outside: float,
    max_outside: tuple[int, int],
) -> list[_Hypothesis]:
    """Every (variant, detections left unnamed at the top and bottom, start) hypothesis
    with its log score: variant prior, uniform start, the cost of the unnamed end
    detections and :func:`_score_variant`'s evidence of the named ones."""
    p, gaps, n = ev.p, ev.gaps, len(ev.order)
    log_scale_prior = _norm_logpdf(np.log(_SCALE_GRID), SCALE_SD)
    log_scale_prior -= _logsumexp(log_scale_prior)
    trims = [
        (top, bot)
        for top in range(max_outside[0] + 1)
        for bot in range(max_outside[1] + 1)
        if (top + bot == 0) or (p_outside > 0 and n - top - bot >= 2)
    ]
    hyps: list[_Hypothesis] = []
    for variant, prior in priors.items():
        seq = _variant_sequence(*variant, cs) if prior > 0 else None
        if seq is None:
            continue
        first, last = LEVEL_IDS[seq[0]] - 1, LEVEL_IDS[seq[-1]] - 1
        for top, bot in trims:
            kept = slice(top, n - bot)
            # an unnamed end detection looks like the set's end level (C6 like C7) and
            # costs p_outside on top of that: never cheaper than naming it that level
            log_trim = (n - top - bot) * np.log1p(-p_outside)
            if top:
                log_trim += weight * np.log(p[:top, first]).sum()
            if bot:
                log_trim += weight * np.log(p[n - bot :, last]).sum()
            if top + bot:
                log_trim += (top + bot) * np.log(p_outside)
            for score, start, labels in _score_variant(
                seq, cs, p[kept], None if gaps is None else gaps[top : n - bot - 1],
                None if ev.heights is None else ev.heights[kept],
                None if ev.ribs is None else ev.ribs[kept],
                p_skip, weight, log_scale_prior,
            ):  # fmt: skip
                named = ("",) * top + labels + ("",) * bot
                total = score + np.log(prior) - np.log(len(seq)) + log_trim
                hyps.append((total, named, variant, start, seq))
    return hyps


def _posterior(hyps: list[_Hypothesis], order: np.ndarray, cs: ClassSet) -> LevelDecoding:
    """The decoding from the hypotheses: their posteriors, merged over those that name
    the detections alike; the best naming, its confidence and its shifts."""
    scores = np.array([h[0] for h in hyps])
    post = np.exp(scores - _logsumexp(scores))
    by_labels: dict[tuple[str, ...], float] = {}
    best_of: dict[tuple[str, ...], tuple[float, int]] = {}
    for k, ((_, labels, *_rest), w) in enumerate(zip(hyps, post, strict=True)):
        by_labels[labels] = by_labels.get(labels, 0.0) + float(w)
        if labels not in best_of or w > best_of[labels][0]:
            best_of[labels] = (float(w), k)
    ranked = sorted(by_labels.items(), key=lambda kv: -kv[1])
    best_labels = ranked[0][0]
    _, _, variant, _, seq = hyps[best_of[best_labels][1]]

    def agreeing(labels: tuple[str, ...] | None) -> float:
        # a naming that leaves an end detection unnamed but names the others alike gives
        # the same levels: it counts for the naming (and likewise for the shifted ones)
        if labels is None:
            return 0.0
        return sum(w for lab, w in by_labels.items() if _agrees(lab, labels))

    def in_input_order(labels: tuple[str, ...]) -> tuple[str, ...]:
        out = [""] * len(order)
        for i, lv in zip(order, labels, strict=True):
            out[int(i)] = lv
        return tuple(out)

    levels = in_input_order(best_labels)
    return LevelDecoding(
        levels=levels,
        class_ids=np.array([cs.class_id(lv) if lv else 0 for lv in levels], dtype=int),
        confidence=float(agreeing(best_labels)),
        shifts={k: agreeing(_shift(best_labels, seq, k, cs.levels)) for k in _SHIFT_WORDS},
        variant=variant,
        alternatives=tuple((in_input_order(lab), float(w)) for lab, w in ranked[1:6]),
        namings={in_input_order(lab): float(w) for lab, w in ranked},
    )


def _agrees(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Two namings give the same level wherever both name a detection (and share one)."""
    both = [(x, y) for x, y in zip(a, b, strict=True) if x and y]
    return bool(both) and all(x == y for x, y in both)


def _shift(
    labels: tuple[str, ...], seq: tuple[str, ...], k: int, named: tuple[str, ...]
) -> tuple[str, ...] | None:
    """``labels`` (levels of ``seq``, ``""`` for a detection left unnamed) moved k
    positions along ``seq`` (a level not in ``named``, the set's levels, is unnamed);
    None past its ends."""
    idx = [seq.index(lv) + k for lv in labels if lv]
    if not idx or min(idx) < 0 or max(idx) >= len(seq):
        return None
    it = iter(seq[i] if seq[i] in named else "" for i in idx)
    return tuple(next(it) if lv else "" for lv in labels)


def _emissions(
    seq: tuple[str, ...],
    cs: ClassSet,
    p: np.ndarray,
    heights: np.ndarray | None,
    ribs: np.ndarray | None,
    weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(unnamed positions (P,) bool, log evidence (G, N, P) of detection i at position
    a of ``seq`` for each patient scale of the grid): class evidence, ribs, body height."""
    n, n_pos = p.shape[0], len(seq)
    ghost = np.array([lv not in cs.levels for lv in seq])  # unnamed: not a class (T13)
    # column j = class id j + 1; a level outside the set (never first or last) looks
    # like its neighbours (T13 like T12 or L1): the better of the two
    prev_cols = [LEVEL_IDS[seq[a - 1] if ghost[a] else seq[a]] - 1 for a in range(n_pos)]
    next_cols = [LEVEL_IDS[seq[a + 1] if ghost[a] else seq[a]] - 1 for a in range(n_pos)]
    emit = weight * np.log(np.maximum(p[:, prev_cols], p[:, next_cols]))  # (N, P)
    if ribs is not None:
        r = np.clip(ribs, 0.02, 0.98)[:, None]
        thor = np.array([lv.startswith("T") for lv in seq])[None, :]
        emit = emit + np.where(thor, np.log(r), np.log(1 - r))
    emit_g = np.broadcast_to(emit, (len(_SCALE_GRID), n, n_pos)).copy()  # (G, N, P)
    if heights is not None:
        h_exp = np.array([BODY_HEIGHT_MM.get(lv) or np.nan for lv in seq])
        ratio = np.log(
            heights[None, :, None] / (_SCALE_GRID[:, None, None] * h_exp[None, None, :])
        )
        emit_g = emit_g + np.nan_to_num(_norm_logpdf(ratio, HEIGHT_SD), nan=0.0)
    return ghost, emit_g


def _steps(seq: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Expected centroid spacing (mm) from each position of ``seq`` to the next and to
    the one after (a vertebra skipped), and their log-normal sds."""
    n_pos = len(seq)
    step1 = np.array([expected_spacing_mm(seq[a], seq[a + 1]) for a in range(n_pos - 1)])
    sd1 = np.array([0.35 if seq[a + 1] == "S1" else SPACING_SD for a in range(n_pos - 1)])
    return step1, step1[:-1] + step1[1:], sd1, np.maximum(sd1[:-1], sd1[1:])


def _score_variant(
    seq: tuple[str, ...],
    cs: ClassSet,
    p: np.ndarray,
    gaps: np.ndarray | None,
    heights: np.ndarray | None,
    ribs: np.ndarray | None,
    p_skip: float,
    weight: float,
    log_scale_prior: np.ndarray,
) -> list[tuple[float, int, tuple[str, ...]]]:
    """(log evidence, start, Viterbi labels) for every feasible start along ``seq``.

    Forward pass (sum over skip patterns and the patient-scale grid) for the evidence,
    Viterbi (max) for the labels. Arrays are (scale G, start S, position P). An
    algorithmic kernel: the forward and Viterbi recursions share one loop over the
    detections (vectorised over scales, starts and positions), so it stays one function.
    """
    n, n_pos = p.shape[0], len(seq)
    n_grid = len(_SCALE_GRID)
    ghost, emit_g = _emissions(seq, cs, p, heights, ribs, weight)
    step1, step2, sd1, sd2 = _steps(seq)
    log_stay = np.log1p(-p_skip)
    log_skip = np.log(p_skip) if p_skip > 0 else -np.inf
    starts = np.arange(n_pos)
    neg = -np.inf
    # alpha / delta: (G, S, P); detection 0 sits at position = start
    alpha = np.full((n_grid, n_pos, n_pos), neg)
    alpha[:, starts, starts] = emit_g[:, 0, :]
    delta = alpha.copy()
    back = np.zeros((n, n_grid, n_pos, n_pos), dtype=np.int8)  # 1 or 2 positions moved
    for i in range(1, n):
        if gaps is not None:
            lg = np.log(gaps[i - 1])
            sp1 = _norm_logpdf(lg - np.log(_SCALE_GRID[:, None] * step1[None, :]), sd1[None, :])
            sp2 = _norm_logpdf(lg - np.log(_SCALE_GRID[:, None] * step2[None, :]), sd2[None, :])
        else:
            sp1 = np.zeros((n_grid, n_pos - 1))
            sp2 = np.zeros((n_grid, max(n_pos - 2, 0)))
        a1 = np.full_like(alpha, neg)
        a2 = np.full_like(alpha, neg)
        d1 = np.full_like(alpha, neg)
        d2 = np.full_like(alpha, neg)
        a1[:, :, 1:] = alpha[:, :, :-1] + log_stay + sp1[:, None, :]
        d1[:, :, 1:] = delta[:, :, :-1] + log_stay + sp1[:, None, :]
        if n_pos > 2:
            a2[:, :, 2:] = alpha[:, :, :-2] + log_skip + sp2[:, None, :]
            d2[:, :, 2:] = delta[:, :, :-2] + log_skip + sp2[:, None, :]
        e = emit_g[:, i, :][:, None, :]
        alpha = np.logaddexp(a1, a2) + e
        back[i] = np.where(d2 > d1, 2, 1)
        delta = np.maximum(d1, d2) + e
    # evidence per start: sum over end positions, then over the scale grid
    ev = _logsumexp(alpha, axis=2) + log_scale_prior[:, None]  # (G, S)
    ev_s = _logsumexp(ev, axis=0)  # (S,)
    vit = delta.max(axis=2) + log_scale_prior[:, None]  # (G, S)
    out = []
    for s in range(n_pos):
        if np.isfinite(ev_s[s]):
            g = int(np.argmax(vit[:, s]))
            path = _backtrace(back[:, g, s], int(np.argmax(delta[g, s])))
            labels = tuple("" if ghost[q] else seq[q] for q in path)
            out.append((float(ev_s[s]), s, labels))
    return out


def _backtrace(back: np.ndarray, end: int) -> list[int]:
    """The positions of the detections, first to last, of the Viterbi path ending at
    position ``end`` (``back[i]``: the positions detection i moved, 1 or 2)."""
    pos, path = end, [end]
    for i in range(len(back) - 1, 0, -1):
        pos -= int(back[i, pos])
        path.append(pos)
    return path[::-1]
