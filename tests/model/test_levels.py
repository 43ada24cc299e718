"""Level decoding (model/levels.py) on constructed class-probability inputs."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from napari_vertebra.core.labels import EXTENDED, PAPER, ClassSet
from napari_vertebra.model.levels import decode_levels

#: Rough centroid spacings (mm) used to build inputs: upper thoracic, lower thoracic,
#: thoracolumbar and lumbar; independent of the module's prior table.
SPACING = {"T": 21.0, "TL": 29.0, "L": 36.0, "S": 45.0}


def probs(cs: ClassSet, names, peak: float = 0.6, seed: int = 0) -> np.ndarray:
    """(N, K) rows peaked at each name's class (the rest spread with a little noise)."""
    rng = np.random.default_rng(seed)
    k = len(cs.ids)
    p = rng.uniform(0.5, 1.5, (len(names), k)) * (1 - peak) / (k - 1)
    for i, n in enumerate(names):
        p[i, cs.class_id(n) - 1] = peak
    return p


def centroids(names) -> np.ndarray:
    """Centroid rows (mm) of consecutive levels with rough spacings."""
    rows = [0.0]
    for a, b in itertools.pairwise(names):
        if b == "S1":
            key = "S"
        elif a.startswith("L") or (b.startswith("L") and a.startswith("T")):
            key = "L" if a.startswith("L") else "TL"
        else:
            key = "T" if int(a[1:]) < 9 else "TL"
        rows.append(rows[-1] + SPACING[key])
    return np.array(rows)


def test_clean_inputs_decode_right_with_high_confidence():
    names = ["T9", "T10", "T11", "T12", "L1", "L2"]
    d = decode_levels(probs(PAPER, names), PAPER, centroids_mm=centroids(names))
    assert list(d.levels) == names
    assert d.class_ids.tolist() == [PAPER.class_id(n) for n in names]
    assert d.confidence > 0.95
    assert max(d.shifts.values()) < 0.05
    assert d.variant == (12, 5)
    assert re.fullmatch(r"T9\.\.L2, level confidence (0\.9\d|1\.00)", d.summary())
    js = json.loads(json.dumps(d.as_dict()))
    assert js["levels"] == names and js["level_confidence"] == pytest.approx(
        d.confidence, abs=1e-4
    )
    assert set(js["level_shifts"]) == {"-2", "-1", "+1", "+2"}
    assert js["level_summary"] == d.summary()


def test_detections_come_back_in_input_order():
    names = ["L1", "L2", "L3", "L4", "L5", "S1"]
    rows = centroids(names)
    perm = np.array([3, 0, 5, 1, 4, 2])
    d = decode_levels(probs(EXTENDED, names)[perm], "extended", centroids_mm=rows[perm])
    assert list(d.levels) == [names[i] for i in perm]


def test_evidence_calling_for_t13_returns_t13():
    names = ["T10", "T11", "T12", "T13", "L1", "L2"]
    d = decode_levels(probs(EXTENDED, names), EXTENDED, centroids_mm=centroids(names))
    assert list(d.levels) == names and d.variant == (13, 5)
    assert "13 thoracic" in d.summary()


def test_evidence_calling_for_l6_returns_l6():
    names = ["L3", "L4", "L5", "L6", "S1"]
    d = decode_levels(probs(EXTENDED, names), EXTENDED, centroids_mm=centroids(names))
    assert list(d.levels) == names and d.variant == (12, 6)


def test_a_lone_t13_at_the_edge_needs_the_class_frequencies():
    # T13 is the last vertebra of the view: only its own probability speaks for it
    names = ["T8", "T9", "T10", "T11", "T12", "T13"]
    p = probs(EXTENDED, names, peak=0.6)
    rows = centroids(names)
    plain = decode_levels(p, EXTENDED, centroids_mm=rows)
    assert plain.levels[-1] == "L1"  # 0.6 vs 0.02 does not beat a 1 % prior alone
    # trained on data where T13 is 20 times rarer than the other levels, the same
    # probability is strong evidence: divided by the frequency, T13 wins
    freq = np.ones(len(EXTENDED.ids))
    freq[EXTENDED.class_id("T13") - 1] = freq[EXTENDED.class_id("L6") - 1] = 0.05
    d = decode_levels(p, EXTENDED, centroids_mm=rows, class_frequencies=freq)
    assert list(d.levels) == names and d.variant == (13, 5)
    with pytest.raises(ValueError, match="21 positive"):
        decode_levels(p, EXTENDED, class_frequencies=np.ones(3))


def test_eleven_thoracic_in_the_paper_set():
    names = ["T9", "T10", "T11", "L1", "L2"]
    d = decode_levels(probs(PAPER, names), PAPER, centroids_mm=centroids(names))
    assert list(d.levels) == names and d.variant == (11, 5)


def test_a_variant_needs_evidence_to_beat_its_prior():
    # a normal T10..L2 whose T13 column gets a little (10 %) of every row: no T13
    names = ["T10", "T11", "T12", "L1", "L2"]
    p = probs(EXTENDED, names)
    p[:, EXTENDED.class_id("T13") - 1] = 0.1
    d = decode_levels(p, EXTENDED, centroids_mm=centroids(names))
    assert list(d.levels) == names and d.variant == (12, 5)
    # evidence split evenly between T13 and L1 for one vertebra is not enough either
    names2 = ["T11", "T12", "L1", "L2", "L3"]
    p2 = probs(EXTENDED, names2, peak=0.45)
    p2[2, EXTENDED.class_id("T13") - 1] = 0.45
    d2 = decode_levels(p2, EXTENDED)
    assert "T13" not in d2.levels


def test_flat_probabilities_give_a_low_level_confidence():
    for cs in (PAPER, EXTENDED):
        d = decode_levels(np.ones((5, len(cs.ids))), cs)
        assert d.confidence < 0.2, cs.name
        assert len(set(d.levels)) == 5


def test_shifted_evidence_gives_the_shifted_answer():
    names = ["T8", "T9", "T10", "T11", "T12", "L1"]
    d = decode_levels(probs(PAPER, names, seed=3), PAPER, centroids_mm=centroids(names))
    assert list(d.levels) == names
    # most detections say one level lower: the whole naming follows the majority
    lower = ["T9", "T10", "T11", "T12", "L1", "L2"]
    p = probs(PAPER, lower, seed=4)
    p[1] = probs(PAPER, ["T9"], seed=5)[0]  # one dissenting vertebra
    d2 = decode_levels(p, PAPER)
    assert list(d2.levels) == lower
    assert d2.confidence < decode_levels(probs(PAPER, lower, seed=4), PAPER).confidence


def test_evidence_split_between_two_namings_reports_the_shift():
    names = ["T4", "T5", "T6", "T7", "T8"]
    p = np.full((5, 17), 0.1 / 15)
    for i, n in enumerate(names):
        p[i, PAPER.class_id(n) - 1] = 0.45
        p[i, PAPER.class_id(n) - 2] = 0.45  # the level above, equally likely
    d = decode_levels(p, PAPER)
    assert d.confidence < 0.6
    other = d.shifts[1] if d.levels[0] == "T3" else d.shifts[-1]
    assert other > 0.35
    assert "one level" in d.summary()


def test_spacing_tips_an_ambiguous_case():
    flat = np.ones((5, 17))
    lumbar = decode_levels(flat, PAPER, centroids_mm=np.arange(5) * 36.0)
    assert all(lv.startswith("L") for lv in lumbar.levels)
    thoracic = decode_levels(flat, PAPER, centroids_mm=np.arange(5) * 20.0)
    assert all(lv.startswith("T") and int(lv[1:]) <= 9 for lv in thoracic.levels)
    # body heights alone tip it the same way
    big = decode_levels(flat, PAPER, heights_mm=np.full(5, 27.0))
    small = decode_levels(flat, PAPER, heights_mm=np.full(5, 16.0))
    assert all(lv.startswith("L") for lv in big.levels)
    assert all(lv.startswith("T") and int(lv[1:]) <= 8 for lv in small.levels)


def test_rib_evidence_places_the_thoracolumbar_junction():
    flat = np.ones((4, 17))
    d = decode_levels(flat, PAPER, rib_bearing=np.array([0.95, 0.95, 0.05, 0.05]))
    assert d.levels == ("T11", "T12", "L1", "L2")


def test_a_missed_vertebra_is_skipped_when_the_gap_says_so():
    names = ["T4", "T5", "T7", "T8", "T9"]  # T6 not detected
    rows = np.array([0.0, 21, 63, 84, 105])  # a double gap between T5 and T7
    d = decode_levels(probs(PAPER, names), PAPER, centroids_mm=rows)
    assert list(d.levels) == names
    # without skips the names must be consecutive, so they cannot match
    assert list(decode_levels(probs(PAPER, names), PAPER, rows, p_skip=0.0).levels) != names


def test_a_t13_in_the_paper_set_is_left_unnamed_not_the_spine_above_shifted():
    """The paper set has no T13 class: its T13 (labelled nothing, like C7) lies between
    two named levels. The decoder used to name the spine above it one level off (the
    T13 called T12, the T12 called T11, ...); it now leaves the T13 unnamed."""
    names = ["T8", "T9", "T10", "T11", "T12", "T13", "L1", "L2", "L3"]
    cen = centroids(names)
    # a paper-set detector: the T13 looks like T12 or L1 (it was never a class)
    p = probs(PAPER, [n if n != "T13" else "T12" for n in names])
    p[5] = 0.02
    p[5, PAPER.class_id("T12") - 1] = p[5, PAPER.class_id("L1") - 1] = 0.4
    d = decode_levels(p, PAPER, centroids_mm=cen)
    assert list(d.levels) == [n if n != "T13" else "" for n in names]
    assert d.class_ids[5] == 0 and d.variant == (13, 5) and "13 thoracic" in d.summary()
    # the shifted namings skip the unnamed level too (never a "T13" in the paper set)
    assert all("T13" not in lab for lab, _ in d.alternatives)
    # a normal spine in the paper set is not turned into a 13-thoracic one
    normal = ["T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3"]
    dn = decode_levels(probs(PAPER, normal), PAPER, centroids_mm=centroids(normal))
    assert list(dn.levels) == normal and dn.variant == (12, 5)


def test_a_vertebra_outside_the_set_at_an_end_is_left_unnamed():
    """C5 and C6 above C7 look most like C7 to a detector trained on the extended set;
    they are left unnamed instead of pushing every level below them down."""
    names = ["C7", "T1", "T2", "T3", "T4", "T5"]
    p = probs(EXTENDED, names)
    c7 = p[0]
    p2 = np.vstack([c7, p])  # a C6 that the detector calls C7-like, above the real C7
    rows = np.concatenate([[-18.0], centroids(names)])
    d = decode_levels(p2, EXTENDED, centroids_mm=rows)
    assert list(d.levels) == ["", *names] and d.class_ids[0] == 0
    assert d.confidence > 0.8
    no = decode_levels(p2, EXTENDED, centroids_mm=rows, p_outside=0.0)
    assert list(no.levels) != ["", *names]  # without the option every level shifts


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, 17\)"):
        decode_levels(np.ones((3, 21)), PAPER)
    with pytest.raises(ValueError, match="non-negative"):
        decode_levels(-np.ones((3, 17)), PAPER)
    # 17 levels + an unnamed T13 between T12 and L1 + 3 at the ends
    with pytest.raises(ValueError, match="cannot be named"):
        decode_levels(np.ones((22, 17)), PAPER)
    with pytest.raises(ValueError, match="cannot be named"):
        decode_levels(np.ones((19, 17)), PAPER, p_outside=0.0)
    with pytest.raises(ValueError, match="p_outside"):
        decode_levels(np.ones((2, 17)), PAPER, p_outside=1.0)
    with pytest.raises(ValueError, match="share a centroid"):
        decode_levels(np.ones((2, 17)), PAPER, centroids_mm=[5.0, 5.0])
    with pytest.raises(ValueError, match="heights_mm"):
        decode_levels(np.ones((2, 17)), PAPER, heights_mm=[20.0, -1.0])
    with pytest.raises(ValueError, match="rib_bearing"):
        decode_levels(np.ones((2, 17)), PAPER, rib_bearing=[0.5, 2.0])
    with pytest.raises(ValueError, match="centroids_mm"):
        decode_levels(np.ones((3, 17)), PAPER, centroids_mm=[1.0, 2.0])
    with pytest.raises(ValueError, match="p_skip"):
        decode_levels(np.ones((2, 17)), PAPER, p_skip=1.0)
    empty = decode_levels(np.zeros((0, 17)), PAPER)
    assert empty.levels == () and empty.summary() == "no vertebrae"


def test_levels_module_does_not_import_torch():
    code = (
        "import sys, napari_vertebra.model.levels\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fit_evidence_weight_tempers_overconfident_evidence():
    from napari_vertebra.model.calibration import fit_evidence_weight

    order = list(PAPER.levels)
    samples_right, samples_mixed = [], []
    for k in range(8):
        truth = order[2 + k : 7 + k]
        samples_right.append({"class_probs": probs(PAPER, truth, seed=k), "truth": truth})
        # a quarter of the images look one level off as a whole (one bias per image)
        seen = order[3 + k : 8 + k] if k % 4 == 0 else truth
        samples_mixed.append({"class_probs": probs(PAPER, seen, seed=k), "truth": truth})
    w_right, t_right = fit_evidence_weight(samples_right, PAPER)
    assert w_right == max(t_right)  # right evidence: no reason to temper it
    w_mixed, t_mixed = fit_evidence_weight(samples_mixed, PAPER)
    assert w_mixed < 1.0 and t_mixed[w_mixed] > t_mixed[1.0]
    d = decode_levels(samples_mixed[0]["class_probs"], PAPER, evidence_weight=w_mixed)
    assert d.confidence < decode_levels(samples_mixed[0]["class_probs"], PAPER).confidence
    assert d.probability_of(samples_mixed[0]["truth"]) > 0.01
    with pytest.raises(ValueError, match="at least one"):
        fit_evidence_weight([], PAPER)


def test_class_frequencies_smooth_and_cap_the_boost_of_rare_classes():
    from napari_vertebra.model.levels import class_frequencies

    counts = np.array([100] * 17 + [50, 3, 0, 40])  # T13 seen 3 times, L6 never
    f = class_frequencies(counts)
    assert f.shape == (21,) and np.isclose(f.sum(), 1.0) and (f > 0).all()
    typical = np.median(f)
    assert f[18] < f[17] < typical  # rarer in training, smaller share
    assert typical / f.min() <= 10 + 1e-9  # a never-seen class is boosted 10x at most
    assert np.isclose(f[19], f.min())
    with pytest.raises(ValueError, match="non-negative"):
        class_frequencies([1, -1, 2])
    with pytest.raises(ValueError, match="max_boost"):
        class_frequencies([1, 2], max_boost=0.5)


def test_a_naming_of_detections_that_are_not_vertebrae_is_not_certain():
    names = ["T9", "T10", "T11", "T12", "L1", "L2"]
    p, cen = probs(PAPER, names, peak=0.9), centroids(names)
    sure = decode_levels(p, PAPER, centroids_mm=cen, evidence_weight=0.5,
                         vertebra_probs=np.full(6, 0.995))  # fmt: skip
    assert sure.confidence >= 0.9 and sure.vertebrae > 0.98
    # the same class evidence on boxes the detector finds unlikely to be vertebrae at all
    # (the aorta, the sternum, noise at a low threshold): named alike, never certain
    junk = decode_levels(p, PAPER, centroids_mm=cen, evidence_weight=0.5,
                         vertebra_probs=np.full(6, 0.4))  # fmt: skip
    assert list(junk.levels) == names
    assert junk.naming == pytest.approx(sure.naming)
    assert junk.naming >= 0.9 > junk.confidence
    assert junk.confidence == pytest.approx(junk.naming * 0.4 ** (0.5 * 6))
    assert "look like vertebrae at only" in junk.summary()
    assert sum(junk.shifts.values()) + junk.confidence <= 1 + 1e-9
    with pytest.raises(ValueError, match="vertebra_probs"):
        decode_levels(p, PAPER, vertebra_probs=np.full(6, 1.5))
